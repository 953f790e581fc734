"""`python -m modellink.patches` prints every registered patch and why it exists."""
from modellink.patches import list_patches

for patch in list_patches():
    print(f"[{patch.group}] {patch.target}: {patch.reason}")
