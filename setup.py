from pathlib import Path

from setuptools import find_packages, setup

requirements = [
    line.strip()
    for line in Path(__file__).with_name("requirements.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]

setup(
    name="modellink",
    version="0.1.0",
    description="ModelLink-style LLM training on megatron-core for Ascend NPU, NVIDIA GPU and CPU",
    packages=find_packages(include=["modellink", "modellink.*"]),
    python_requires=">=3.9",
    install_requires=requirements,
    extras_require={
        "npu": ["torch_npu"],
        "monitor": ["tensorboard"],
        "lm_eval": ["lm_eval>=0.4,<0.5"],
        # The optional integrations are installed for the tests so that they run, not skip.
        "test": ["pytest", "tensorboard", "lm_eval>=0.4,<0.5", "pyarrow", "trl>=1.16,<2"],
    },
)
