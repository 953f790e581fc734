"""`python -m modellink.patches` prints every change we make to upstream behaviour and every
other place we depend on megatron-core's internals: patches, private calls, subclass
overrides and file formats."""
from modellink.patches import list_patches
from modellink.patches.couplings import FORMATS, PRIVATE_CALLS, SUBCLASSES, overrides

print("patches:")
for patch in list_patches():
    print(f"  [{patch.group}] {patch.target}: {patch.reason}")
print("private calls:")
for call in PRIVATE_CALLS:
    print(f"  {call.target}({', '.join(call.params)}) from {call.caller}")
print("subclass overrides:")
for path in SUBCLASSES:
    for method, owner in overrides(path):
        print(f"  {path}.{method} overrides {owner}.{method}")
print("format couplings:")
for fmt in FORMATS:
    print(f"  {fmt.name}: {fmt.ours} <-> {', '.join(fmt.upstream)}: {fmt.coupling}")
