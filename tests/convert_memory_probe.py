"""Run conversions in a fresh process and print each one's peak resident memory above the
resident memory it started from, as JSON (bytes), for tests/test_convert_streaming.py.

argv[1] is a JSON list of ConvertOptions keyword dicts, run in order, twice: the first pass
loads what conversion imports on first use (transformers' config classes, ~16 MiB), the second
is measured. The kernel's high-water mark (VmHWM) is reset before each conversion (writing 5
to /proc/self/clear_refs), so the previous one's peak does not count. Run with
MALLOC_MMAP_THRESHOLD_ set low, so freed tensors go back to the kernel at once instead of
staying in malloc's heap.
"""
import json
import sys

from modellink.checkpoint.convert import ConvertOptions, convert


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def main() -> None:
    conversions = json.loads(sys.argv[1])
    for options in conversions:
        convert(ConvertOptions(**options, overwrite=True))
    peaks = []
    for options in conversions:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        before = _status_kib("VmRSS")
        convert(ConvertOptions(**options, overwrite=True))
        peaks.append((_status_kib("VmHWM") - before) * 1024)
    print(json.dumps(peaks))


if __name__ == "__main__":
    main()
