"""The CPU's name for the benchmark tables, from /proc/cpuinfo. Virtual machines often show AMD's
as just "AMD EPYC": then the family and model say which generation it is."""
import re


def _first(text, key):
    return next((l.split(":", 1)[1].strip() for l in text.splitlines() if l.startswith(key)), "")


def amd_core(family, model):
    """AMD's core generation from the CPUID family and model (decimal), or "" where unknown."""
    if family == 23:
        return "Zen or Zen+" if model < 0x30 else "Zen 2"
    if family == 25:
        return "Zen 4" if 0x10 <= model <= 0x1F or 0x60 <= model <= 0x7F or 0xA0 <= model <= 0xAF else "Zen 3"
    if family == 26:
        return "Zen 5"
    return ""


def cpu_description(cpuinfo):
    """e.g. "Intel(R) Xeon(R) Platinum 8480+", "AMD EPYC (family 25 model 17, Zen 4)"."""
    name = _first(cpuinfo, "model name")
    family, model = _first(cpuinfo, "cpu family"), _first(cpuinfo, "model\t")
    if not name or re.search(r"\d{3,}", name):  # a model number: the name says enough
        return name
    if not (family.isdigit() and model.isdigit()):
        return name
    core = amd_core(int(family), int(model)) if "AMD" in name else ""
    return f"{name} (family {family} model {model}{', ' + core if core else ''})"


if __name__ == "__main__":
    print(cpu_description(open("/proc/cpuinfo").read()))
