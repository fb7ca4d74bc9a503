"""Hostile and careless convert inputs: exit 2, exactly one line naming the file or flag and the
rule, no traceback, and nothing half-written left behind (issue 18, runtime part)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from q7x2_runtime.cli import main
from tests.runtime_fs import NOBODY, fill_inodes, needs_root, one_error_line, open_up, run_cli, tmpfs, world_tmp  # noqa: F401

CONFIG_INT_FIELDS = ["num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "vocab_size", "max_position_embeddings"]
CONFIG_FLOAT_FIELDS = ["rope_theta", "rms_norm_eps"]


def convert(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(["convert", *argv])
    return rc, capsys.readouterr().err


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def no_debris(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".partial-" in p.name or ".old-" in p.name or ".tmp-" in p.name]


@pytest.fixture
def hf(tiny_hf: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_hf, tmp_path / "hf"))


@pytest.fixture(scope="module")
def mg_of_tiny(tiny_hf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mg") / "mg"
    assert main(["convert", "-i", str(tiny_hf), "-o", str(out), "--tp", "2", "--pp", "2"]) == 0
    return out


# -- config.json values -------------------------------------------------------------------

BAD_INT = st.one_of(
    st.none(), st.booleans(), st.text(max_size=6), st.floats(allow_nan=True), st.integers(max_value=0),
    st.integers(min_value=10**8, max_value=10**30), st.lists(st.integers(), max_size=2), st.just({}),
)  # fmt: skip
BAD_FLOAT = st.one_of(st.none(), st.booleans(), st.text(max_size=6), st.floats(max_value=0), st.just(float("nan")), st.floats(min_value=1e13), st.just([]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_bad_config_value_names_the_file_and_field(tiny_hf: Path, tmp_path_factory, capsys, data) -> None:
    field = data.draw(st.sampled_from(CONFIG_INT_FIELDS + CONFIG_FLOAT_FIELDS))
    value = data.draw(BAD_INT if field in CONFIG_INT_FIELDS else BAD_FLOAT)
    root = tmp_path_factory.mktemp("cfg")
    d = root / "hf"
    d.mkdir()
    cfg = json.loads((tiny_hf / "config.json").read_text())
    cfg[field] = value
    (d / "config.json").write_text(json.dumps(cfg))  # NaN/Infinity: Python's json reads them back
    rc, err = convert(capsys, "-i", str(d), "-o", str(root / "out"))
    line = one_error_line(err, "convert")
    assert rc == 2 and f"{d / 'config.json'}: {field}" in line, line
    assert not (root / "out").exists() and no_debris(root) == []


@pytest.mark.parametrize(
    "edit, expect",
    [
        ({"num_attention_heads": 3}, "num_attention_heads=3 is not a multiple of num_key_value_heads=2"),
        ({"hidden_size": 66}, "hidden_size=66 is not a multiple of num_attention_heads=4"),
        ({"tie_word_embeddings": "no"}, 'tie_word_embeddings is "no"; expected true or false'),
        ({"num_hidden_layers": None}, "num_hidden_layers is null"),
    ],
)
def test_config_cross_field_rules(hf: Path, tmp_path: Path, capsys, edit: dict, expect: str) -> None:
    cfg = json.loads((hf / "config.json").read_text())
    (hf / "config.json").write_text(json.dumps({**cfg, **edit}))
    rc, err = convert(capsys, "-i", str(hf), "-o", str(tmp_path / "mg"))
    assert rc == 2 and expect in one_error_line(err, "convert") and str(hf / "config.json") in err


def test_config_with_fewer_layers_than_the_checkpoint_is_refused(hf: Path, tmp_path: Path, capsys) -> None:
    cfg = json.loads((hf / "config.json").read_text())
    cfg["num_hidden_layers"] = 2
    (hf / "config.json").write_text(json.dumps(cfg))
    rc, err = convert(capsys, "-i", str(hf), "-o", str(tmp_path / "mg"))
    line = one_error_line(err, "convert")
    assert rc == 2 and "num_hidden_layers=2 but the checkpoint holds layers up to model.layers.3" in line
    assert not (tmp_path / "mg").exists()


# -- the output must never be, contain or sit inside the input ------------------------------


@pytest.mark.parametrize("where", ["same", "inside", "contains", "same-via-symlink"])
@pytest.mark.parametrize("direction", ["hf", "mg"])
def test_save_dir_overlapping_load_dir_is_refused_before_anything_is_touched(
    where: str, direction: str, hf: Path, mg_of_tiny: Path, tmp_path: Path, capsys
) -> None:
    src = hf if direction == "hf" else Path(shutil.copytree(mg_of_tiny, tmp_path / "mgcopy"))
    before = tree_digest(src)
    if where == "same":
        save = src
    elif where == "inside":
        save = src / "out"
    elif where == "contains":
        save = src.parent
    else:
        (tmp_path / "link").symlink_to(src)
        save = tmp_path / "link"
    rc, err = convert(capsys, "--from", direction, "-i", str(src), "-o", str(save), "--force")
    line = one_error_line(err, "convert")
    assert rc == 2 and "--save-dir" in line and "--load-dir" in line
    assert tree_digest(src) == before and no_debris(src.parent) == []


def test_force_onto_an_existing_file_leaves_no_old_copy(hf: Path, tmp_path: Path, capsys) -> None:
    target = tmp_path / "mc"
    target.write_text("not a checkpoint")
    rc, err = convert(capsys, "-i", str(hf), "-o", str(target))
    assert rc == 2 and "already exists; pass --force" in one_error_line(err, "convert")
    rc, _ = convert(capsys, "-i", str(hf), "-o", str(target), "--force")
    assert rc == 0 and (target / "iter_0000001").is_dir()
    assert no_debris(tmp_path) == []


# -- mcore -> HF trusts only what its manifest vouches for -----------------------------------


def test_flipped_byte_in_a_rank_file_fails_naming_the_file(mg_of_tiny: Path, tmp_path: Path, capsys) -> None:
    mg = Path(shutil.copytree(mg_of_tiny, tmp_path / "mg"))
    victim = mg / "iter_0000001" / "mp_rank_01_001" / "model_optim_rng.pt"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside tensor data: parses fine, converts to wrong weights
    victim.write_bytes(bytes(data))
    rc, err = convert(capsys, "--from", "mg", "-i", str(mg), "-o", str(tmp_path / "back"))
    line = one_error_line(err, "convert")
    assert rc == 2 and str(victim) in line and "sha256 differs" in line
    assert not (tmp_path / "back").exists() and no_debris(tmp_path) == []


def test_python_api_checks_the_manifest_too(mg_of_tiny: Path, tmp_path: Path) -> None:
    from q7x2_runtime.convert import load_mcore_as_hf_state_dict
    from q7x2_runtime.errors import UserError

    mg = Path(shutil.copytree(mg_of_tiny, tmp_path / "mg"))
    victim = mg / "iter_0000001" / "mp_rank_00_000" / "model_optim_rng.pt"
    data = bytearray(victim.read_bytes())
    data[-4096] ^= 0x80
    victim.write_bytes(bytes(data))
    with pytest.raises(UserError, match="sha256 differs|cannot parse|truncated"):
        load_mcore_as_hf_state_dict(mg)


def _kinds_of_unreadable(path: Path, kind: str) -> None:
    if kind == "missing":
        path.unlink()
    elif kind == "broken-symlink":
        path.unlink()
        path.symlink_to(path.with_name("gone"))
    elif kind == "directory":
        path.unlink()
        path.mkdir()
    elif kind == "fifo":
        path.unlink()
        os.mkfifo(path)
    elif kind == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif kind == "empty":
        path.write_bytes(b"")


UNREADABLE = {
    "missing": "missing",
    "broken-symlink": "broken symbolic link",
    "directory": "is a directory, not a regular file",
    "fifo": "is a FIFO (named pipe), not a regular file",
    "truncated": "truncated",
    "empty": "truncated",
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(UNREADABLE))
def test_unreadable_hf_shard_says_what_happened(kind: str, hf: Path, tmp_path: Path) -> None:
    shard = sorted(hf.glob("model-*.safetensors"))[1]
    _kinds_of_unreadable(shard, kind)
    proc = run_cli("convert", "-i", str(hf), "-o", str(tmp_path / "mg"), timeout=120)
    line = one_error_line(proc.stderr, "convert")
    assert proc.returncode == 2 and str(shard) in line and UNREADABLE[kind] in line, line
    assert not (tmp_path / "mg").exists()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["missing", "directory", "fifo", "truncated"])
def test_unreadable_rank_file_says_what_happened(kind: str, mg_of_tiny: Path, tmp_path: Path) -> None:
    mg = Path(shutil.copytree(mg_of_tiny, tmp_path / "mg"))
    rank = mg / "iter_0000001" / "mp_rank_00_001" / "model_optim_rng.pt"
    _kinds_of_unreadable(rank, kind)
    proc = run_cli("convert", "--from", "mg", "-i", str(mg), "-o", str(tmp_path / "back"), timeout=120)
    line = one_error_line(proc.stderr, "convert")
    expect = {"missing": "missing rank file", "directory": "not a regular file", "fifo": "FIFO", "truncated": "recorded"}[kind]
    assert proc.returncode == 2 and str(rank) in line and expect in line, line


def test_fifo_as_config_json_does_not_block(hf: Path, tmp_path: Path) -> None:
    (hf / "config.json").unlink()
    os.mkfifo(hf / "config.json")
    proc = run_cli("convert", "-i", str(hf), "-o", str(tmp_path / "mg"), timeout=60)
    line = one_error_line(proc.stderr, "convert")
    assert proc.returncode == 2 and "config.json is a FIFO (named pipe), not a regular file" in line


@needs_root
def test_permission_denied_shard_is_not_called_corrupt(hf: Path, world_tmp: Path) -> None:
    hf = Path(shutil.copytree(hf, world_tmp / "hf"))
    open_up(world_tmp)
    shard = sorted(hf.glob("model-*.safetensors"))[0]
    os.chmod(shard, 0o600)  # root's; unreadable by nobody
    proc = run_cli("convert", "-i", str(hf), "-o", str(world_tmp / "mg"), user=NOBODY, timeout=120)
    line = one_error_line(proc.stderr, "convert")
    assert proc.returncode == 2 and str(shard) in line and "permission denied" in line and "corrupt" not in line, line


# -- creating the output on a hostile filesystem -----------------------------------------------


@pytest.mark.slow
@needs_root
@pytest.mark.parametrize("case", ["read-only", "no-inodes", "disk-full", "not-writable"])
@pytest.mark.parametrize("direction", ["hf", "mg"])
def test_output_on_a_hostile_filesystem_is_one_line_and_no_debris(case: str, direction: str, hf: Path, mg_of_tiny: Path, world_tmp: Path) -> None:
    src = Path(shutil.copytree(hf if direction == "hf" else mg_of_tiny, world_tmp / "src"))
    open_up(world_tmp)
    mnt = world_tmp / "mnt"
    options = {"read-only": "size=8m,ro", "no-inodes": "size=8m,nr_inodes=64", "disk-full": "size=96k", "not-writable": "size=8m"}[case]
    user = None
    with tmpfs(mnt, options):
        if case == "no-inodes":
            fill_inodes(mnt)
        if case == "not-writable":
            (mnt / "locked").mkdir(mode=0o755)  # owned by root, so nobody may not write it
            user = NOBODY
        parent = mnt / "locked" if case == "not-writable" else mnt
        out = parent / "out"
        proc = run_cli("convert", "--from", direction, "-i", str(src), "-o", str(out), user=user, timeout=120)
        line = one_error_line(proc.stderr, "convert")
        want = {"read-only": "read-only", "no-inodes": "no free inodes", "disk-full": "disk", "not-writable": "permission denied"}[case]
        assert proc.returncode == 2 and want in line and str(parent) in line, line
        assert not out.exists()
        if case != "read-only":
            assert no_debris(parent) == []


# -- outputs are deterministic ------------------------------------------------------------------


def test_two_clean_conversions_are_byte_identical(hf: Path, tmp_path: Path, capsys) -> None:
    for name in ("a", "b"):
        assert main(["convert", "-i", str(hf), "-o", str(tmp_path / name), "--tp", "2", "--pp", "2"]) == 0
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    for name in ("a", "b"):
        assert main(["convert", "--from", "mg", "-i", str(tmp_path / "a"), "-o", str(tmp_path / f"back-{name}")]) == 0
    assert tree_digest(tmp_path / "back-a") == tree_digest(tmp_path / "back-b")


def test_zip_records_carry_torch_saves_fixed_timestamp(hf: Path, tmp_path: Path) -> None:
    import zipfile

    assert main(["convert", "-i", str(hf), "-o", str(tmp_path / "mg")]) == 0
    with zipfile.ZipFile(next((tmp_path / "mg").rglob("model_optim_rng.pt"))) as z:
        assert {i.date_time for i in z.infolist()} == {(1980, 0, 0, 0, 0, 0)}


# -- --skip-existing verifies what it trusts ---------------------------------------------------


def test_skip_existing_redoes_a_damaged_conversion(hf: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "mg"
    common = ["-i", str(hf), "-o", str(out), "--pp", "2", "--skip-existing"]
    assert convert(capsys, *common)[0] == 0
    clean = tree_digest(out)
    rank = next(out.rglob("model_optim_rng.pt"))
    data = bytearray(rank.read_bytes())
    data[len(data) // 3] ^= 0x10  # same size, one bit off
    rank.write_bytes(bytes(data))
    rc, err = convert(capsys, *common)
    assert rc == 0 and "does not match its sha256; converting again" in err and "Traceback" not in err
    assert tree_digest(out) == clean and no_debris(tmp_path) == []
    rank.write_bytes(rank.read_bytes()[:-10])  # truncated
    rc, err = convert(capsys, *common)
    assert rc == 0 and "bytes, the manifest says" in err and tree_digest(out) == clean
