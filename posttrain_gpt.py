"""MindSpeed-LLM's name for trainer.py: `torchrun posttrain_gpt.py --stage dpo|orm ...` runs
the same post-training entry point."""
import os
import runpy

if __name__ == "__main__":
    runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "trainer.py"),
                   run_name="__main__")
