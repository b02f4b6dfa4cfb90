"""The wheel and the sdist (``pip wheel --no-deps --no-build-isolation .``, setuptools' PEP 517 sdist): what they
hold (the package with its built-in configs, LICENSE; no tests, no fixtures), that the sdist builds the same wheel,
and (slow) the wheel installed into a scratch virtual environment running the demo from a directory outside the
checkout with only the installed commands."""
import configparser
import glob
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest

from launch import run_bounded
from oneflow_posmlp import __version__

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = ["demo", "posmlp_b", "posmlp_s", "posmlp_t", "posmlp_t_384_ft"]
# a checkout's generated folders (top level), never part of a build's input
GENERATED = {".venv", ".git", "build", "dist", ".pytest_cache", "data", "output", "runs", "log"}


def _not_source(folder, names):
    return [n for n in names if n == "__pycache__" or n.endswith(".egg-info")
            or (os.path.samefile(folder, ROOT) and n in GENERATED)]


def _pip(*args, timeout=300):
    res = run_bounded([sys.executable, "-m", "pip", "--disable-pip-version-check", *args], timeout=timeout,
                      capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    return res


def build_wheel(src, out):
    """``pip wheel`` of the source tree ``src`` into ``out`` (no network: no dependencies, no isolated build
    environment); returns the wheel's path."""
    _pip("wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src))
    (wheel,) = glob.glob(os.path.join(out, "oneflow_posmlp-*.whl"))
    return wheel


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """``(wheel, sdist, wheel built from the sdist)``, from a copy of the checkout (tests and fixtures included, so
    their absence from the outputs is the packaging's doing; the copy keeps configs/ a link)."""
    base = tmp_path_factory.mktemp("packaging")
    src = base / "src"
    shutil.copytree(ROOT, src, symlinks=True, ignore=_not_source)
    wheel = build_wheel(src, base / "dist")
    res = run_bounded([sys.executable, "-c", "import sys; from setuptools import build_meta as b; "
                       "print(b.build_sdist(sys.argv[1]))", str(base / "dist")], cwd=str(src), capture_output=True,
                      text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    sdist = str(base / "dist" / res.stdout.strip().splitlines()[-1])
    with tarfile.open(sdist) as tar:
        tar.extractall(base / "unpacked")
    (unpacked,) = glob.glob(str(base / "unpacked" / "oneflow-posmlp-*"))
    return wheel, sdist, build_wheel(unpacked, base / "from_sdist")


def _package_sources():
    """The package's files in the checkout: every module and the built-in configs."""
    out = set()
    for folder, dirs, files in os.walk(os.path.join(ROOT, "oneflow_posmlp")):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        out |= {os.path.relpath(os.path.join(folder, f), ROOT) for f in files if f.endswith((".py", ".yaml"))}
    return out


def test_the_wheel_holds_the_package_its_configs_and_license_and_nothing_else(built):
    wheel = built[0]
    assert os.path.basename(wheel) == f"oneflow_posmlp-{__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        dist_info = f"oneflow_posmlp-{__version__}.dist-info/"
        metadata = z.read(dist_info + "METADATA").decode()
        entry_points = z.read(dist_info + "entry_points.txt").decode()
    package = {n for n in names if not n.startswith(dist_info)}
    assert package == _package_sources()
    assert {f"oneflow_posmlp/configs/{name}.yaml" for name in CONFIGS} <= package
    assert dist_info + "LICENSE" in names
    assert not [n for n in names if n.startswith(("tests/", "configs/")) or "fixtures" in n]
    assert f"\nVersion: {__version__}\n" in metadata and "Requires-Dist: oneflow==0.9.0" in metadata
    setup = configparser.ConfigParser()
    setup.read(os.path.join(ROOT, "setup.cfg"))
    for line in setup["options.entry_points"]["console_scripts"].strip().splitlines():
        command, target = (part.strip() for part in line.split("="))
        assert f"{command} = {target}" in entry_points


def test_the_sdist_holds_the_sources_configs_license_and_changelog_not_the_tests(built):
    _, sdist, from_sdist = built
    top = f"oneflow-posmlp-{__version__}/"
    with tarfile.open(sdist) as tar:
        names = {m.name[len(top):] for m in tar.getmembers() if m.isfile() or m.issym()}
    assert {"LICENSE", "README.md", "CHANGELOG.md", "setup.cfg", "pyproject.toml", "MANIFEST.in"} <= names
    assert _package_sources() <= names
    assert not [n for n in names if n.startswith(("tests/", "configs/", "tools/")) or "fixtures" in n]
    # the sdist builds the same wheel as the checkout
    with zipfile.ZipFile(built[0]) as a, zipfile.ZipFile(from_sdist) as b:
        assert sorted(a.namelist()) == sorted(b.namelist())


def _scratch_venv(where, wheel):
    """A virtual environment holding only the installed wheel, on this interpreter's pinned stack: its
    site-packages lists this environment's site-packages as a plain path (.pth line), so OneFlow & co. import
    from there, but not this environment's editable install of oneflow_posmlp (its finder is a .pth there)."""
    import sysconfig

    run_bounded([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True, timeout=120)
    python = os.path.join(where, "bin", "python")
    _pip("--python", python, "install", "--no-deps", "--no-index", "--ignore-installed", "-q", wheel)
    res = run_bounded([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], check=True,
                      capture_output=True, text=True, timeout=60)
    with open(os.path.join(res.stdout.strip(), "_pinned_stack.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    return os.path.join(where, "bin")


@pytest.mark.slow
def test_the_installed_wheel_runs_the_demo_from_any_directory(built, tmp_path):
    """``pip install`` of the wheel, then from an empty directory: ``posmlp-train -c demo`` generates the demo set
    under the working directory and trains an epoch (cut short); eval, predict and convert run on what it wrote;
    the log and the checkpoint name the version."""
    bin_dir = _scratch_venv(tmp_path / "venv", built[0])
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PATH=bin_dir + os.pathsep + env.get("PATH", ""), GLOG_minloglevel="2")

    def command(*argv, timeout=300):
        res = run_bounded(list(argv), cwd=str(work), env=env, capture_output=True, text=True, timeout=timeout)
        assert res.returncode == 0, (argv, res.stdout[-2000:], res.stderr[-3000:])
        return res.stdout

    where = command("python", "-c", "import oneflow_posmlp; print(oneflow_posmlp.__file__)")
    assert where.startswith(str(tmp_path / "venv")), where  # the installed package, not the checkout's
    assert command("posmlp-train", "--version").startswith(f"posmlp-train: oneflow-posmlp {__version__} ")
    small = ["data.demo_train_per_class=24", "data.demo_val_per_class=8", "data.num_workers=0"]  # a small demo set
    command("posmlp-train", "-c", "demo", "--opts", "train.epochs=1", "data.limit_train_batches=3",
            "log.progress=false", *small)
    assert sorted(os.listdir(work / "data" / "demo_shapes" / "val")) == ["circle", "cross", "square", "triangle"]
    log = (work / "output" / "demo" / "log_rank0.txt").read_text().splitlines()
    assert log[0].split("] ", 1)[1].startswith(f"oneflow-posmlp {__version__} (OneFlow 0.9.0")
    assert "done: 1 epochs" in log[-1]
    version = command("python", "-c", "from oneflow_posmlp.checkpoint import read_oneflow_checkpoint; "
                                      "print(read_oneflow_checkpoint('output/demo/best')['posmlp_version'])")
    assert version.strip() == __version__
    result = json.loads(command("posmlp-eval", "-c", "demo", "--weights", "output/demo/best", "--opts", *small))
    assert result["images"] == 32
    out = command("posmlp-predict", "-c", "demo", "--weights", "output/demo/best", "--json", "--topk", "1",
                  "data/demo_shapes/val/circle")
    assert len(json.loads(out)["predictions"]) == 8
    assert "--src" in command("posmlp-convert", "--help")
