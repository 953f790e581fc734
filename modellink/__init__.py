"""ModelLink-style LLM training framework on megatron-core."""
import warnings

# megatron-core warns on import that apex / Transformer Engine are missing; modellink never
# uses them and logs the operator path it does use, so the warnings only mislead.
warnings.filterwarnings("ignore", message=r".*(Transformer Engine|Apex).*not installed.*")
