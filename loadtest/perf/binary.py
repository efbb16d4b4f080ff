"""Where perf_analyzer comes from: the `perf-analyzer` wheel's binary, fetched when pip cannot install it here.

PyPI's `perf-analyzer` 2.60 wheels are tagged manylinux_2_38 (built on Ubuntu 24.04): on a host with an older
glibc (Debian 12: 2.36) pip sees only the 0.1.0 placeholder, which `tritonclient[all]` pulls in. `fetch()` then
downloads the 2.60 wheel for this machine's architecture (`pip download --platform manylinux_2_38_...`) and unpacks
it under the virtualenv (`<venv>/opt/perf_analyzer/`).

That binary needs five C symbols of glibc 2.38 (the C23 `strto*`/`sscanf` entry points) and two of libstdc++ 13.
On an older host `compat()` builds, once, a small preload library with those seven symbols (forwarding to the
older equivalents; iostreams initialised by the library's own static init) and a copy of the binary whose
requirements on those three symbol versions are marked weak (a missing weak version is a warning for the dynamic
loader, and an unversioned definition then satisfies the reference). A wrapper script `perf_analyzer` beside them
sets LD_PRELOAD, so every caller (this package, Model Analyzer's `perf_analyzer_path`) runs one path.
"""
from __future__ import annotations

import os
import platform
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

from segformer.errors import ProjectError

VERSION = "2.60.0"
WHEEL_GLIBC = "2_38"
INSTALL = (f"install it: `pip install perf-analyzer=={VERSION}` (glibc >= 2.38 hosts: Ubuntu 24.04, NGC "
           f"containers), else `python -m loadtest.perf fetch` (downloads the wheel and builds a glibc shim)")
# the symbol versions the shim provides, and so the only ones made weak in the patched copy
SHIM_VERSIONS = ("GLIBC_2.38", "GLIBCXX_3.4.31", "GLIBCXX_3.4.32")
NOISE = "weak version `"  # the loader's warning for each weak version the host lacks (stderr), dropped by callers

SHIM_SOURCE = r"""
// perf_analyzer 2.60 (built against glibc 2.38 / libstdc++ 13) on an older host: the seven symbols it lacks.
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <vector>
extern "C" {
long __isoc23_strtol(const char* s, char** e, int b) { return strtol(s, e, b); }
unsigned long __isoc23_strtoul(const char* s, char** e, int b) { return strtoul(s, e, b); }
long long __isoc23_strtoll(const char* s, char** e, int b) { return strtoll(s, e, b); }
unsigned long long __isoc23_strtoull(const char* s, char** e, int b) { return strtoull(s, e, b); }
int __isoc23_sscanf(const char* s, const char* f, ...) {
  va_list ap; va_start(ap, f); int r = vsscanf(s, f, ap); va_end(ap); return r;
}
void shim_ios_init() __asm__("_ZSt21ios_base_library_initv");
void shim_replace_cold(void*, char*, size_t, const char*, size_t, size_t)
    __asm__("_ZNSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEE15_M_replace_coldEPcmPKcmm");
}
// libstdc++ 13 initialises std::cout inside the library; older ones need an Init object: this one.
static std::ios_base::Init shim_iostreams;
void shim_ios_init() {}
// std::string::_M_replace's overlapping case: [p, p+len1) becomes s[0, len2) (s inside the string), the
// how_much characters after the old span move behind the new one; capacity was checked by the caller.
void shim_replace_cold(void*, char* p, size_t len1, const char* s, size_t len2, size_t how_much) {
  std::vector<char> src(s, s + len2);
  if (how_much && len1 != len2) std::memmove(p + len2, p + len1, how_much);
  if (len2) std::memcpy(p, src.data(), len2);
}
"""


class PerfAnalyzerMissing(ProjectError):
    """No runnable perf_analyzer here: the message names the install."""


def home() -> Path:
    """Where `fetch` unpacks the wheel: inside the virtualenv, shared by every checkout that uses it."""
    return Path(sys.prefix) / "opt" / "perf_analyzer"


def candidates() -> list[Path]:
    """$PERF_ANALYZER, the installed wheel's binary, a fetched one (its compat wrapper first), then PATH."""
    out = []
    if os.environ.get("PERF_ANALYZER"):
        out.append(Path(os.environ["PERF_ANALYZER"]))
    try:
        import perf_analyzer  # the 2.60 wheel's package; the 0.1.0 placeholder has no bin/

        out.append(Path(perf_analyzer.__file__).parent / "bin" / "perf_analyzer")
    except ImportError:
        pass
    out += [home() / "compat" / "perf_analyzer", home() / "perf_analyzer" / "bin" / "perf_analyzer"]
    found = shutil.which("perf_analyzer")
    if found and "perf_analyzer/bin" not in found:  # the wheel's console script only wraps its own binary
        out.append(Path(found))
    return [p for p in out if p.is_file()]


def probe(binary: Path, timeout: float = 30) -> tuple[bool, str]:
    """(runs, why not): `--version` answers without a loader error."""
    try:
        r = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=timeout)
    except OSError as exc:
        return False, str(exc)
    except subprocess.TimeoutExpired:
        return False, "--version did not answer"
    text = "\n".join(l for l in (r.stdout + r.stderr).splitlines() if NOISE not in l)
    if "Perf Analyzer Version" in text:
        return True, ""
    return False, text.strip().splitlines()[0] if text.strip() else f"exit {r.returncode}"


def locate(build_compat: bool = True) -> Path:
    """A runnable perf_analyzer: the first candidate that runs, or a fetched one made runnable by the compat shim.
    PerfAnalyzerMissing (naming the install) when there is none."""
    problems = []
    for p in candidates():
        ok, why = probe(p)
        if ok:
            return p
        problems.append(f"{p}: {why}")
        fetched = home() / "perf_analyzer" / "bin" / "perf_analyzer"
        if build_compat and "version `" in why and p == fetched:
            return compat(p)
    detail = f" ({'; '.join(problems)})" if problems else ""
    raise PerfAnalyzerMissing(f"no runnable perf_analyzer{detail}: {INSTALL}")


def fetch(version: str = VERSION, dest: Path | None = None, quiet: bool = True) -> Path:
    """Download the perf-analyzer wheel for this architecture and unpack it under `dest` (default `home()`);
    returns the binary. Nothing is installed into site-packages."""
    dest = dest or home()
    binary = dest / "perf_analyzer" / "bin" / "perf_analyzer"
    stamp = dest / "VERSION"
    if binary.is_file() and stamp.is_file() and stamp.read_text().strip() == version:
        return binary
    wheels = dest.parent / ".wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--platform",
           f"manylinux_{WHEEL_GLIBC}_{platform.machine()}", "-d", str(wheels), f"perf-analyzer=={version}"]
    r = subprocess.run(cmd + (["-q"] if quiet else []), capture_output=True, text=True)
    found = sorted(wheels.glob(f"perf_analyzer-{version}-*.whl"))
    if r.returncode or not found:
        tail = (r.stderr or r.stdout).strip().splitlines()
        raise PerfAnalyzerMissing(f"pip could not download perf-analyzer=={version} for {platform.machine()} "
                                  f"({tail[-1] if tail else 'no wheel'}): {INSTALL}")
    shutil.rmtree(dest, ignore_errors=True)
    with zipfile.ZipFile(found[-1]) as z:
        z.extractall(dest)
    binary.chmod(0o755)
    stamp.write_text(version + "\n")
    return binary


def _needed(b: bytes | bytearray):
    """(offset of vna_flags, version name, flags) of every needed symbol version (.gnu.version_r) of a 64-bit
    little-endian ELF file's bytes (what the wheel ships)."""
    if b[:4] != b"\x7fELF" or b[4] != 2 or b[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF file")
    shoff, = struct.unpack_from("<Q", b, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", b, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", b, shoff + i * shentsize) for i in range(shnum)]
    for _, kind, _, _, offset, _, link, _, _, _ in sections:
        if kind != 0x6FFFFFFE:  # SHT_GNU_verneed
            continue
        strtab = sections[link][4]
        entry = offset
        while True:
            _, count, _, aux, following = struct.unpack_from("<HHIII", b, entry)
            a = entry + aux
            for _ in range(count):
                _, flags, _, name, next_aux = struct.unpack_from("<IHHII", b, a)
                yield a + 4, bytes(b[strtab + name:b.index(0, strtab + name)]).decode(), flags
                a += next_aux
            if not following:
                break
            entry += following


def needed_versions(path: Path) -> dict[str, int]:
    """{version name: flags} the ELF file needs (flag 0x2: weak)."""
    return {name: flags for _, name, flags in _needed(Path(path).read_bytes())}


def weaken_versions(path: Path, names: tuple[str, ...] = SHIM_VERSIONS) -> list[str]:
    """Mark the ELF file's needed symbol versions `names` weak (VER_FLG_WEAK), in place; returns those marked."""
    b = bytearray(Path(path).read_bytes())
    try:
        entries = list(_needed(b))
    except ValueError:
        raise ValueError(f"{path} is not a 64-bit little-endian ELF file") from None
    marked = []
    for at, name, flags in entries:
        if name in names:
            struct.pack_into("<H", b, at, flags | 0x2)
            marked.append(name)
    Path(path).write_bytes(bytes(b))
    return marked


def compat(binary: Path, dest: Path | None = None) -> Path:
    """The wrapper script that runs a weakened copy of `binary` with the shim preloaded (built once)."""
    dest = dest or binary.parent.parent.parent / "compat"
    wrapper = dest / "perf_analyzer"
    if wrapper.is_file() and probe(wrapper)[0]:
        return wrapper
    compiler = shutil.which(os.environ.get("CXX", "g++"))
    if not compiler:
        raise PerfAnalyzerMissing(f"{binary} needs glibc 2.38 and this host's is older; building its shim needs "
                                  f"g++ (apt-get install g++), or run on a glibc >= 2.38 host: {INSTALL}")
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "shim.cc").write_text(SHIM_SOURCE)
    lib = dest / "libperf_analyzer_shim.so"
    r = subprocess.run([compiler, "-O2", "-shared", "-fPIC", "-o", str(lib), str(dest / "shim.cc")],
                       capture_output=True, text=True)
    if r.returncode:
        raise PerfAnalyzerMissing(f"building the perf_analyzer shim failed: {r.stderr.strip()[:300]}")
    copy = dest / "perf_analyzer.bin"
    shutil.copyfile(binary, copy)
    weaken_versions(copy)
    copy.chmod(0o755)
    wrapper.write_text(f'#!/bin/sh\nLD_PRELOAD="{lib}${{LD_PRELOAD:+:$LD_PRELOAD}}" exec "{copy}" "$@"\n')
    wrapper.chmod(0o755)
    ok, why = probe(wrapper)
    if not ok:
        raise PerfAnalyzerMissing(f"perf_analyzer does not run here even with the shim ({why}): run on a glibc >= "
                                  f"2.38 host: {INSTALL}")
    return wrapper


def version(binary: Path) -> str:
    """`Perf Analyzer Version 0.0.0 (commit 3a49a23)`-style line (the wheel's build prints 0.0.0)."""
    r = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30)
    lines = [l for l in (r.stdout + r.stderr).splitlines() if "Perf Analyzer Version" in l]
    return lines[0].strip() if lines else "unknown"
