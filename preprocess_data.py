"""Processing data for pretraining and fine-tuning: raw text / instruction data -> Megatron
indexed datasets (.bin/.idx). See modellink/data/preprocess.py and `--help`."""

from modellink.data.preprocess import main

if __name__ == "__main__":
    main()
