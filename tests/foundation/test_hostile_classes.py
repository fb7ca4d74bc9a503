"""Each class of hostile or careless inventory, refused by the real CLI with one line per
violation (file:line, YAML path, rule), exit 2, no traceback, in bounded time and memory.

Each class is a table of cases and, where the class is a family of values, a hypothesis
strategy of them. Hypothesis examples and tables run through the CLI's entry point in this
process (fast); `test_every_table_through_the_real_cli` runs every table again in a separate
interpreter under a memory limit and a timeout (hostile_cli.py), so a case that hangs,
allocates without bound or raises a traceback fails there.
"""

from __future__ import annotations

import copy
import ipaddress
import os
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from q7x2_runtime.safe_text import show
from tests.foundation.hostile_cli import Case, assert_one_line_each, check_cases, run_cli

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "inventory.example.yaml"
BASE_TEXT = EXAMPLE.read_text()
BASE = yaml.safe_load(BASE_TEXT)
FEW = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
# Every table, by name: each is checked in process by its own test and all of them together
# by the real CLI under the memory limit.
TABLES: dict[str, object] = {}


def table(fn):  # noqa: ANN001, ANN201 - a registering decorator
    TABLES[fn.__name__] = fn
    return fn


def edited(*changes: tuple[str, object]) -> str:
    """The example inventory as YAML with changes at dotted paths ('hosts.0.address', value);
    the value ... deletes the key."""
    data = copy.deepcopy(BASE)
    for dotted, value in changes:
        *parents, last = dotted.split(".")
        node = data
        for p in parents:
            node = node[int(p)] if p.isdigit() else node.setdefault(p, {})
        key = int(last) if last.isdigit() else last
        if value is ...:
            del node[key]
        else:
            node[key] = value
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=False, width=1 << 20)


def case(name: str, *changes: tuple[str, object], expect: list[tuple[str, str]]) -> Case:
    return Case(name, edited(*changes), expect)


# --- YAML alias graphs -------------------------------------------------------------------


def _laughs(fanout: int, levels: int, merge: bool = False) -> str:
    lines = ['l0: &l0 "lol"']
    for i in range(1, levels + 1):
        if merge:
            lines.append(f"l{i}: &l{i} {{{', '.join(f'k{j}: *l{i - 1}' for j in range(fanout))}}}")
        else:
            lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * fanout)}]")
    return "\n".join(lines) + "\n" + BASE_TEXT


def bomb_cases(fanout: int, extra_levels: int, mapping: bool) -> list[Case]:
    # Enough levels that the expanded document exceeds the bound (fanout**levels > 50,000).
    levels = 1
    while fanout**levels <= 50_000:
        levels += 1
    text = _laughs(fanout, levels + extra_levels, merge=mapping)
    return [Case(f"bomb-{fanout}-{extra_levels}-{mapping}", text, [("(top level)", "expands to more than 50000 values")])]


@table
def alias_bombs(tmp: Path) -> list[Case]:
    return bomb_cases(10, 4, False) + bomb_cases(2, 20, False) + bomb_cases(9, 0, True) + bomb_cases(50, 3, False)


@settings(FEW, max_examples=3)
@given(fanout=st.integers(2, 12), extra_levels=st.integers(0, 6), mapping=st.booleans())
def test_alias_bombs_are_refused_in_one_line(tmp_path_factory, fanout, extra_levels, mapping):
    check_cases(tmp_path_factory.mktemp("bomb"), bomb_cases(fanout, extra_levels, mapping), in_process=True)


SELF_REFERENCES = [
    "a: &a [*a]\n",
    "a: &a {x: *a}\n",
    "a: &a [[[*a]]]\n",
    "a: &a [1, {b: [*a]}]\n",
    BASE_TEXT.replace("  name: qwen25-7b\n", "  name: qwen25-7b\n  model: &m {preset: *m}\n", 1),
    BASE_TEXT + "extra: &e\n  - &f [*e, *f]\n",
]


@table
def self_references(tmp: Path) -> list[Case]:
    return [Case(f"self{i}", t, [("(top level)", "a cycle such as &a [*a]")]) for i, t in enumerate(SELF_REFERENCES)]


@table
def deep_and_big_documents(tmp: Path) -> list[Case]:
    return [
            Case("flow-deep", "[" * 5000 + "]" * 5000 + "\n", [("(top level)", "")], line=False),
            Case("block-deep", "".join("  " * i + f"k{i}:\n" for i in range(200)) + "  " * 200 + "v\n", [("(top level)", "nested more than 32 levels")]),
            Case("many-values", "x: [" + ", ".join(["1"] * 150_000) + "]\n", [("(top level)", "holds more than 50000 values")]),
            Case("big-file", "# " + "x" * (2 << 20) + "\n" + BASE_TEXT, [("(top level)", "larger than 1048576: not a YAML file")], line=False),
            Case("control", BASE_TEXT.replace("npu-a", "npu\x01a", 1), [("(top level)", "character U+0001 is not allowed")]),
            Case("dup-key", BASE_TEXT.replace("    tp: 4\n", "    tp: 4\n    tp: 4\n"), [("job.parallelism.tp", "duplicate key")]),
            Case("scalar", "just text\n", [("(top level)", "must be a YAML mapping")], line=False),
            Case("empty", "", [("(top level)", "got empty")], line=False),
            Case("binary", BASE_TEXT.replace('tag: "2.0.0"', "tag: !!binary MjAwMA=="), [("image.tag", "valid string")]),
            Case("date", BASE_TEXT.replace('tag: "2.0.0"', "tag: 2020-01-01"), [("image.tag", "valid string")]),
            Case("python-tag", BASE_TEXT.replace('tag: "2.0.0"', "tag: !!python/object:os.system ls"), [("(top level)", "not valid YAML")]),
            Case("big-int", BASE_TEXT.replace("tp: 4", "tp: " + "9" * 5000), [("(top level)", "not valid YAML")], line=False),
        ]


# --- special files -------------------------------------------------------------------------


def test_only_regular_files_are_read_as_the_inventory(tmp_path):
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    for path, fragment in [(fifo, "is a FIFO, not a regular file"), (Path("/dev/zero"), "is a device"), (tmp_path, "is a directory"), (Path("/dev/null"), "is a device")]:
        proc = run_cli("validate", str(path), timeout=60)
        assert_one_line_each(str(path), proc.returncode, proc.stderr, [("(top level)", fragment)], line=False)
    proc = run_cli("plan", str(fifo), timeout=60)
    assert_one_line_each(str(fifo), proc.returncode, proc.stderr, [("(top level)", "is a FIFO")], line=False)


@table
def hf_config_files(tmp_path: Path) -> list[Case]:
    fifo = tmp_path / "config-fifo.json"
    os.mkfifo(fifo)
    big = tmp_path / "big.json"
    big.write_text('{"a": "' + "x" * (2 << 20) + '"}')
    emptydir = tmp_path / "nodir"
    emptydir.mkdir()
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    bigint = tmp_path / "bigint.json"
    bigint.write_text('{"num_hidden_layers": ' + "9" * 5000 + "}")
    notjson = tmp_path / "bad.json"
    notjson.write_text('{"num_hidden_layers": 2,\n  oops}')
    latin = tmp_path / "latin1.json"
    latin.write_bytes(b'{"x": "\xe9"}')
    cases = []
    for path, fragment in [
        (fifo, "is a FIFO, not a regular file"),
        (Path("/dev/zero"), "is a device"),
        (big, "larger than 1048576"),
        (emptydir, "nodir/config.json: no such file"),
        (deep, "nested too deeply"),
        (bigint, "not a usable JSON document"),
        (notjson, "not valid JSON at line 2 column 3"),
        (latin, "not UTF-8"),
        (tmp_path / "absent.json", "absent.json: no such file"),
    ]:
        cases.append(case(path.name, ("job.model", {"hf_config": str(path)}), expect=[("job.model", fragment)]))
    return cases


# --- numbers: bounded before any arithmetic ------------------------------------------------

DIMS = {"num_layers": 28, "hidden_size": 3584, "ffn_hidden_size": 18944, "num_attention_heads": 28, "num_query_groups": 4,
        "vocab_size": 152064, "max_position_embeddings": 131072, "rotary_base": 1000000.0, "norm_epsilon": 1e-6}  # fmt: skip


def dims(**changes: object) -> tuple[str, object]:
    return ("job.model", {"dims": {**DIMS, **changes}})


HUGE = st.one_of(st.integers(10**10, 10**30), st.just(2**63), st.just(2**64 + 1))


def huge_cases(n: int) -> list[Case]:
    return [
        case("groups", dims(num_query_groups=n), ("job.parallelism.tp", 3), expect=[("job.model.dims.num_query_groups", "less than or equal to 1024")]),
        case("layers", dims(num_layers=n), ("job.parallelism.pp", 3), expect=[("job.model.dims.num_layers", "less than or equal to 1024")]),
        case("heads", dims(num_attention_heads=n), expect=[("job.model.dims.num_attention_heads", "less than or equal to 1024")]),
        case("tp", ("job.parallelism.tp", n), expect=[("job.parallelism.tp", "less than or equal to 64")]),
        case("pp", ("job.parallelism.pp", n), expect=[("job.parallelism.pp", "less than or equal to 256")]),
        case("nll", ("job.parallelism.num_layer_list", [n, 1]), expect=[("job.parallelism.num_layer_list[0]", "less than or equal to 1024")]),
        case("iters", ("job.training.train_iters", n), expect=[("job.training.train_iters", "less than or equal to 1000000000")]),
        case("gbs", ("job.training.global_batch_size", n), expect=[("job.training.global_batch_size", "less than or equal to")]),
        case("mbs", ("job.training.micro_batch_size", n), expect=[("job.training.micro_batch_size", "less than or equal to")]),
        case("seed", ("job.training.seed", n + 2**32), expect=[("job.training.seed", "less than or equal to 4294967295")]),
        case("port", ("master.port", n), expect=[("master.port", "less than or equal to 65535")]),
        case("devices", ("container.devices", n), expect=[("container.devices", "give a count from 0 to 64")]),
        case("rank", ("hosts.0.node_rank", n), expect=[("hosts[0].node_rank", "less than 1024")]),
        case("workers", ("job.preprocess.workers", n), expect=[("job.preprocess.workers", "less than or equal to 256")]),
        case("shm", ("container.shm_size", f"{n}g"), expect=[("container.shm_size", "")]),
        case("vocab", dims(vocab_size=n), expect=[("job.model.dims.vocab_size", "less than or equal to")]),
    ]


@table
def huge_numbers(tmp_path: Path) -> list[Case]:
    cfg = tmp_path / "huge-config.json"
    cfg.write_text('{"num_hidden_layers": 100000000000, "hidden_size": 896, "intermediate_size": 4864, "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936}')
    hf = [case("hf-layers", ("job.model", {"hf_config": str(cfg)}), expect=[("job.model", f"{cfg}: num_hidden_layers: Input should be less than or equal to 1024")])]
    return huge_cases(10**12) + huge_cases(2**64 + 1) + hf


@FEW
@given(n=HUGE)
def test_huge_numbers_are_refused_at_once(tmp_path_factory, n):
    check_cases(tmp_path_factory.mktemp("huge"), huge_cases(n), in_process=True)


# --- strict types --------------------------------------------------------------------------

INT_FIELDS = ["job.parallelism.tp", "job.parallelism.pp", "job.parallelism.npus_per_node", "master.port", "ssh.port", "job.training.seq_length",
              "job.training.micro_batch_size", "job.training.global_batch_size", "job.training.train_iters", "job.training.seed",
              "job.training.save_interval", "job.training.log_interval", "job.preprocess.workers", "hosts.0.node_rank"]  # fmt: skip
FLOAT_FIELDS = ["job.training.lr", "job.training.min_lr", "job.training.weight_decay", "job.training.clip_grad", "job.training.adam_beta1",
                "job.training.adam_beta2", "job.training.init_method_std", "job.training.lr_warmup_fraction"]  # fmt: skip
BOOL_FIELDS = ["container.network_host", "container.ipc_host", "container.privileged", "job.steps.convert", "job.preprocess.append_eod"]


def _dotted(path: str) -> str:
    return ".".join(f"[{p}]" if p.isdigit() else p for p in path.split(".")).replace(".[", "[")


NOT_INT = [True, False, 4.0, 1e30, float("inf"), float("nan"), "4", "0x10", None, [4], {"a": 4}]
NOT_FLOAT = [True, False, float("inf"), float("-inf"), float("nan"), "0.1", None, [0.1]]
NOT_BOOL = [0, 1, "true", "yes", None, 1.0]


# null means "not given" where a key is optional.
OPTIONAL = {"ssh.port", "hosts.0.node_rank", "container.devices", "hosts.1.devices"}


def type_cases(not_int: object, not_float: object, not_bool: object) -> list[Case]:
    cases = [case(f, (f, not_int), expect=[(_dotted(f), "")]) for f in INT_FIELDS if not (not_int is None and f in OPTIONAL)]
    cases += [case(f, (f, not_float), expect=[(_dotted(f), "")]) for f in FLOAT_FIELDS]
    cases += [case(f, (f, not_bool), expect=[(_dotted(f), "")]) for f in BOOL_FIELDS]
    for where in ("container.devices", "hosts.1.devices"):
        if not isinstance(not_int, list) and not_int is not None:
            cases.append(case(where, (where, not_int), expect=[(_dotted(where), "")]))
        cases.append(case(where + "-list", (where, [0, not_int]), expect=[(_dotted(where), "is not an NPU index")]))
    cases.append(case("rotary", dims(rotary_base=not_float), expect=[("job.model.dims.rotary_base", "")]))
    cases.append(case("eps", dims(norm_epsilon=not_float), expect=[("job.model.dims.norm_epsilon", "")]))
    return cases


@FEW
@given(not_int=st.sampled_from(NOT_INT), not_float=st.sampled_from(NOT_FLOAT), not_bool=st.sampled_from(NOT_BOOL))
def test_types_are_strict(tmp_path_factory, not_int, not_float, not_bool):
    check_cases(tmp_path_factory.mktemp("types"), type_cases(not_int, not_float, not_bool), in_process=True)


@table
def strict_types(tmp: Path) -> list[Case]:
    return [c for i in range(len(NOT_INT)) for c in type_cases(NOT_INT[i], NOT_FLOAT[i % len(NOT_FLOAT)], NOT_BOOL[i % len(NOT_BOOL)])]


@table
def messages_name_what_was_given(tmp: Path) -> list[Case]:
    return [
        case("tp-true", ("job.parallelism.tp", True), expect=[("job.parallelism.tp", "Input should be a valid integer (got True)")]),
        case("port-true", ("master.port", True), expect=[("master.port", "Input should be a valid integer (got True)")]),
        case("dev-true", ("container.devices", True), expect=[("container.devices", "True: give a count of NPUs or a list of NPU indices")]),
        case("inf", ("job.training.lr", float("inf")), expect=[("job.training.lr", "Input should be a finite number (got inf)")]),
        case("shm", ("container.shm_size", "100000000000000000000000g"), expect=[("container.shm_size", "is not a size such as 64g")]),
        case("shm-big", ("container.shm_size", "9000g"), expect=[("container.shm_size", "is outside 1m .. 8192g")]),
        case("shm-zero", ("container.shm_size", "0"), expect=[("container.shm_size", "is outside 1m")]),
    ]  # fmt: skip


# --- anchors: no value may end in a newline --------------------------------------------------

STRING_FIELDS = ["hosts.0.name", "hosts.0.address", "hosts.0.nic", "master.host", "image.repository", "image.tag", "container.name_prefix",
                 "container.shm_size", "container.state_dir", "container.volumes.0", "ssh.user", "ssh.identity", "ssh.known_hosts",
                 "job.name", "job.paths.hf_weights", "job.paths.mcore_weights", "job.paths.raw_dataset", "job.paths.dataset_prefix",
                 "job.paths.save_dir", "job.paths.logs", "job.paths.tokenizer", "job.paths.replica", "hosts.1.ssh.identity"]  # fmt: skip


def _value_at(path: str) -> object:
    node: object = BASE
    for p in path.split("."):
        try:
            node = node[int(p)] if p.isdigit() else node[p]  # type: ignore[index]
        except (KeyError, IndexError, TypeError):
            return None
    return node


TAILS = ["\n", "\n\n", "\r\n", "\nreboot", "\x00", "\u2028", "\t", "\r", "\x85"]


def newline_cases(tail: str) -> list[Case]:
    cases = []
    for f in STRING_FIELDS:
        base = _value_at(f)
        value = (base if isinstance(base, str) else "/apps/x" if "paths" in f or "ssh." in f else "x") + tail
        cases.append(case(f, (f, value), expect=[(_dotted(f), "")]))
    cases.append(case("driver", ("container.driver_mounts", ["/usr/local/Ascend/driver" + tail]), expect=[("container.driver_mounts[0]", "")]))
    cases.append(case("env-name", ("job.env", {"A" + tail: "1"}), expect=[("job.env." + repr("A" + tail), "environment variable name")]))
    cases.append(case("json-key", ("job.preprocess", {"json_keys": ["text" + tail]}), expect=[("job.preprocess.json_keys[0]", "not a dataset column name")]))
    return cases


@FEW
@given(tail=st.sampled_from(TAILS))
def test_no_string_value_may_end_in_a_newline(tmp_path_factory, tail):
    check_cases(tmp_path_factory.mktemp("anchors"), newline_cases(tail), in_process=True)


@table
def trailing_newlines(tmp: Path) -> list[Case]:
    return newline_cases("\n") + newline_cases("\nreboot") + newline_cases("\u2028")


def test_a_literal_block_scalar_cannot_sneak_a_newline_into_a_path(tmp_path):
    text = BASE_TEXT.replace("    hf_weights: /apps/models/Qwen2.5-7B\n", "    hf_weights: |\n      /apps/models/Qwen2.5-7B\n")
    line = text.splitlines().index("    hf_weights: |") + 1
    check_cases(tmp_path, [Case("block", text, [("job.paths.hf_weights", r"'/apps/models/Qwen2.5-7B\n' may contain only")])], in_process=True)
    proc = run_cli("validate", str(next(tmp_path.glob("case*.yaml"))))
    assert proc.stderr.split(":")[1] == str(line)


# --- addresses ------------------------------------------------------------------------------


def _inet_aton_spellings(ip: ipaddress.IPv4Address) -> list[str]:
    n = int(ip)
    a, b, c, d = ip.packed
    return [str(n), hex(n), f"{a}.{(b << 16) | (c << 8) | d}", f"{a}.{b}.{(c << 8) | d}", f"0{a:o}.{b}.{c}.{d}", f"{a:#x}.{b}.{c}.{d}"]


def loopback_cases(ip: ipaddress.IPv4Address) -> list[Case]:
    cases = [case(s, ("hosts.0.address", s), expect=[("hosts[0].address", "is not a valid IPv4 address")]) for s in _inet_aton_spellings(ip)]
    six_to_four = ipaddress.IPv6Address((0x2002 << 112) | (int(ip) << 80))
    for s in [str(ip), f"::ffff:{ip}", "::1", "localhost6", "LOCALHOST.", "ip6-loopback", "x.localhost", "localhost.localdomain", f"64:ff9b::{ip}", str(six_to_four)]:
        cases.append(case(s, ("hosts.0.address", s), expect=[("hosts[0].address", "is a loopback address")]))
    return cases


@FEW
@given(ip=st.ip_addresses(v=4, network="127.0.0.0/8"))
def test_every_loopback_spelling_is_refused_with_several_hosts(tmp_path_factory, ip):
    check_cases(tmp_path_factory.mktemp("loop"), loopback_cases(ip), in_process=True)


@table
def loopback_spellings(tmp: Path) -> list[Case]:
    return loopback_cases(ipaddress.IPv4Address("127.0.0.1")) + loopback_cases(ipaddress.IPv4Address("127.1.2.3"))


@table
def unusable_addresses(tmp: Path) -> list[Case]:
    bad = [
        ("fe80::1%\nreboot;#", "has an IPv6 scope id"), ("fe80::1%eth0", "has an IPv6 scope id"), ("0.0.0.0", "unspecified"), ("::", "unspecified"),
        ("0.1.2.3", "unspecified"), ("224.0.0.1", "multicast"), ("ff02::1", "multicast"), ("255.255.255.255", "broadcast"),
        ("240.1.2.3", "reserved"), ("::10.0.0.1", "IPv4-compatible"), ("999.999.999.999", "not a valid IPv4 address"),
        ("1.2.3.4.5", "not a valid IPv4 address"), ("010.0.0.1", "not a valid IPv4 address"), ("[::1]", "neither an IP address nor a DNS name"),
        ("a..b", "neither"), ("-a.example", "neither"), ("a" * 64 + ".example", "neither"), ("host name", "neither"), ("", "neither"),
        ("x" * 300, "neither"), ("::ffff:0.0.0.0", "unspecified"),
    ]  # fmt: skip
    return [case(repr(a), ("hosts.0.address", a), expect=[("hosts[0].address", f)]) for a, f in bad]


@table
def duplicate_addresses(tmp: Path) -> list[Case]:
    pairs = [("192.0.2.11", "::ffff:192.0.2.11"), ("2001:db8::1", "2001:DB8:0:0::1"), ("npu-a.example", "NPU-A.example."), ("fd00::1", "fd00:0::0001")]
    return [case(f"{a}={b}", ("hosts.0.address", a), ("hosts.1.address", b), expect=[("hosts[1].address", "is also used by hosts[0]")]) for a, b in pairs]


def test_good_addresses_pass():
    for a in ["192.0.2.11", "2001:db8::5", "npu-a.example.com", "npu-a", "fd00::1", "10.0.0.1", "deadbeef", "a1.b2"]:
        data = yaml.safe_load(edited(("hosts.0.address", a)))
        from q7x2_deploy.validation import validate_data

        assert validate_data(data)[1] == [], a


# --- job.preprocess.json_keys ---------------------------------------------------------------


BAD_KEYS = ["--output-prefix=/home/x", "-x", "../../etc", "a/b", ".", "..", "", " text", "text;id", "é", "a" * 65, "a.b", "$(id)"]


def json_key_cases(key: str) -> list[Case]:
    return [case(repr(key), ("job.preprocess", {"json_keys": ["text", key]}), expect=[("job.preprocess.json_keys[1]", "not a dataset column name")])]


@FEW
@given(key=st.one_of(st.sampled_from(BAD_KEYS), st.text(min_size=1, max_size=8).map(lambda t: "-" + t),
                     st.text(min_size=0, max_size=8).map(lambda t: t + "/x")))  # fmt: skip
def test_json_keys_cannot_inject_options_or_paths(tmp_path_factory, key):
    check_cases(tmp_path_factory.mktemp("keys"), json_key_cases(key), in_process=True)


@table
def json_keys(tmp: Path) -> list[Case]:
    return [c for k in BAD_KEYS for c in json_key_cases(k)] + [
        case("empty", ("job.preprocess", {"json_keys": []}), expect=[("job.preprocess.json_keys", "at least 1 item")]),
        case("many", ("job.preprocess", {"json_keys": ["text"] + [f"k{i}" for i in range(20)]}), expect=[("job.preprocess.json_keys", "at most 16 items")]),
        case("dupe", ("job.preprocess", {"json_keys": ["text", "text"]}), expect=[("job.preprocess.json_keys", "lists text more than once")]),
        case("no-text", ("job.preprocess", {"json_keys": ["instruction"]}), expect=[("job.preprocess.json_keys", "does not include 'text'")]),
        case("not-list", ("job.preprocess", {"json_keys": "text"}), expect=[("job.preprocess.json_keys", "valid list")]),
    ]  # fmt: skip


# --- env values ------------------------------------------------------------------------------

# Every category that prints nothing or reorders text.
NON_PRINTING = ["\x00", "\x01", "\t", "\n", "\r", "\x1b", "\x7f", "\x85", "\x9b", "\u2028", "\u2029", "\u202e", "\u202d", "\u2066", "\u200b",
                "\u200d", "\ufeff", "\u00ad", "\ue000", "\u0378", "\u00a0", "\u3000"]  # fmt: skip


def env_cases(value: str, bad: str) -> list[Case]:
    return [
        case(f"job-env-{bad!r}", ("job.env", {"HCCL_CONNECT_TIMEOUT": value}), expect=[("job.env.HCCL_CONNECT_TIMEOUT", f"U+{ord(bad):04X}")]),
        case(f"host-env-{bad!r}", ("hosts.1.env", {"X": value}), expect=[("hosts[1].env.X", "non-printing character")]),
    ]


@FEW
@given(head=st.text(alphabet="abc $;|", max_size=5), bad=st.sampled_from(NON_PRINTING), tail=st.text(alphabet="xyz'\"", max_size=5))
def test_env_values_refuse_every_non_printing_character(tmp_path_factory, head, bad, tail):
    check_cases(tmp_path_factory.mktemp("env"), env_cases(head + bad + tail, bad), in_process=True)


@FEW
@given(c=st.characters(categories=["Cc", "Cf", "Zl", "Zp", "Co"]))
def test_env_values_refuse_each_non_printing_category(tmp_path_factory, c):
    check_cases(tmp_path_factory.mktemp("envcat"), env_cases(f"a{c}b", c), in_process=True)


@table
def env_values(tmp: Path) -> list[Case]:
    return [c for bad in NON_PRINTING for c in env_cases(f"x{bad}y", bad)] + [
        case("long-value", ("job.env", {"A": "x" * 140_000}), expect=[("job.env", "one `docker run -e` argument takes at most 131071")]),
        case("many", ("job.env", {f"V{i}": "1" for i in range(300)}), expect=[("job.env", "at most 256 items")]),
        case("long-name", ("job.env", {"A" * 300: "1"}), expect=[("job.env." + show("A" * 300, 40), "environment variable name")]),
        case("reserved", ("hosts.0.env", {"NODE_RANK": "3"}), expect=[("hosts[0].env.NODE_RANK", "is computed by q7x2-deploy")]),
    ]  # fmt: skip


# --- cross-field rules -----------------------------------------------------------------------


@table
def model_rules(tmp_path: Path) -> list[Case]:
    cfg = tmp_path / "groups-config.json"
    cfg.write_text('{"num_hidden_layers": 24, "hidden_size": 896, "intermediate_size": 4864, "num_attention_heads": 14, "num_key_value_heads": 3, "vocab_size": 151936}')
    return [
        case("heads-groups", dims(num_query_groups=3), ("job.parallelism.tp", 1), expect=[("job.model.dims", "num_attention_heads 28 is not divisible by num_query_groups 3")]),
        case("hidden-heads", dims(hidden_size=3585), ("job.parallelism.tp", 1), expect=[("job.model.dims", "hidden_size 3585 is not divisible by num_attention_heads 28")]),
        case("hf-groups", ("job.model", {"hf_config": str(cfg)}), expect=[("job.model", f"{cfg}: num_attention_heads 14 is not divisible by num_query_groups 3")]),
        case("two", ("job.model", {"preset": "qwen2.5-7b", "hf_config": str(cfg)}), expect=[("job.model", "gives preset and hf_config: give exactly one model source")]),
        case("three", ("job.model", {"preset": "qwen2.5-7b", "hf_config": str(cfg), "dims": DIMS}), expect=[("job.model", "gives preset and hf_config and dims")]),
        case("dims+preset", ("job.model", {"preset": "qwen2.5-7b", "dims": DIMS}), expect=[("job.model", "give exactly one model source")]),
    ]  # fmt: skip


@table
def volume_rules(tmp: Path) -> list[Case]:
    vol = "container.volumes"
    return [
        case("dup", (vol, ["/apps", "/home", "/apps"]), expect=[("container.volumes[2]", "is mounted twice")]),
        case("dup-slash", (vol, ["/apps", "/home", "/apps/"]), expect=[("container.volumes[2]", "is mounted twice")]),
        case("dup-dot", (vol, ["/apps", "/home", "/apps/./"]), expect=[("container.volumes[2]", "is mounted twice")]),
        case("root", (vol, ["/apps", "/"]), expect=[("container.volumes[1]", "'/' cannot be mounted")]),
        case("root2", (vol, ["/apps", "//"]), expect=[("container.volumes[1]", "'/' cannot be mounted")]),
        case("colon", (vol, ["/apps", "/home:/x"]), expect=[("container.volumes[1]", "contains ':'")]),
        case("driver", (vol, ["/apps", "/usr/local/sbin"]), expect=[("container.volumes[1]", "default Ascend driver mounts")]),
        case("driver-explicit", (vol, ["/apps", "/drv"]), ("container.driver_mounts", ["/drv"]), expect=[("container.driver_mounts[0]", "is mounted twice")]),
        case("jobdir", (vol, ["/apps", "/etc/q7x2"]), expect=[("container.volumes[1]", "collides with /etc/q7x2, where every container reads its job spec")]),
        case("etc", (vol, ["/apps", "/etc"]), expect=[("container.volumes[1]", "would hide the image's own /etc")]),
        case("state-in-job-dir", ("container.state_dir", "/"), expect=[("container.state_dir", "'/' cannot be mounted")]),
        case("opt", (vol, ["/apps", "/opt"]), expect=[("container.volumes[1]", "would hide the image's own /opt/q7x2")]),
        case("usr", (vol, ["/apps", "/usr/local"]), expect=[("container.volumes[1]", "would hide the image's own /usr/local/bin")]),
        case("mindspeed", (vol, ["/apps", "/opt/MindSpeed-LLM"]), expect=[("container.volumes[1]", "would hide the image's own /opt/MindSpeed-LLM")]),
        case("proc", (vol, ["/apps", "/proc/sys"]), expect=[("container.volumes[1]", "inside a kernel filesystem")]),
        case("relative", (vol, ["/apps", "home"]), expect=[("container.volumes[1]", "must be an absolute path")]),
        case("state-colon", ("container.state_dir", "/var/lib/a:b"), expect=[("container.state_dir", "contains ':'")]),
        case("driver-usr", ("container.driver_mounts", ["/usr"]), expect=[("container.driver_mounts[0]", "would hide the image's own /usr")]),
        case("path-in-driver", ("container.driver_mounts", ["/apps/drv"]), ("job.paths.logs", "/apps/drv/logs"), expect=[("job.paths.logs", "inside the read-only driver mount")]),
        case("many", (vol, [f"/v{i}" for i in range(70)]), expect=[("container.volumes", "at most 64 items")]),
    ]  # fmt: skip


@table
def path_rules(tmp: Path) -> list[Case]:
    long_path = "/apps/" + "/".join(["d" * 200] * 21)
    return [
        case("mcore-in-hf", ("job.paths.mcore_weights", "/apps/models/Qwen2.5-7B/mcore"), expect=[("job.paths.mcore_weights", "conversion would write into")]),
        case("hf-in-mcore", ("job.paths.mcore_weights", "/apps/models"), expect=[("job.paths.mcore_weights", "overlap")]),
        case("same", ("job.paths.mcore_weights", "/apps/models/Qwen2.5-7B/"), expect=[("job.paths.mcore_weights", "overlap")]),
        case("save-hf", ("job.paths.save_dir", "/apps/models/Qwen2.5-7B"), expect=[("job.paths.save_dir", "training would write checkpoints into the HF model")]),
        case("save-mcore", ("job.paths.save_dir", "/apps/models/Qwen2.5-7B-mcore-tp4-pp2"), expect=[("job.paths.save_dir", "inside mcore_weights /apps/models/Qwen2.5-7B-mcore-tp4-pp2, which conversion replaces")]),
        case("logs-mcore", ("job.paths.logs", "/apps/models/Qwen2.5-7B-mcore-tp4-pp2/logs"), expect=[("job.paths.logs", "which conversion replaces as a whole")]),
        case("data-mcore", ("job.paths.raw_dataset", "/apps/models/Qwen2.5-7B-mcore-tp4-pp2/a.parquet"), expect=[("job.paths.raw_dataset", "which conversion replaces as a whole")]),
        case("prefix-hf", ("job.paths.dataset_prefix", "/apps/models/Qwen2.5-7B/alpaca"), expect=[("job.paths.dataset_prefix", "would write its dataset prefix into the HF model")]),
        case("logs-hf", ("job.paths.logs", "/apps/models/Qwen2.5-7B/logs"), expect=[("job.paths.logs", "would write its logs into the HF model")]),
        case("replica-hf", ("job.storage", "per-node"), ("job.paths.replica", "/apps/models/Qwen2.5-7B/r"), expect=[("job.paths.replica", "into the HF model")]),
        case("path-max", ("job.paths.logs", long_path), expect=[("job.paths.logs", "Linux takes at most 4095")]),
        case("name-max", ("job.paths.logs", "/apps/" + "n" * 256), expect=[("job.paths.logs", "component of 256 characters")]),
        case("option", ("job.paths.logs", "-rf"), expect=[("job.paths.logs", "must not start with '-'")]),
        case("repo", ("image.repository", "a" * 256), expect=[("image.repository", "at most 255 characters")]),
        case("repo-nl", ("image.repository", "q7x2/x\n"), expect=[("image.repository", "not a Docker repository name")]),
        case("tokenizer-default", ("job.paths.hf_weights", "/data/hf"), expect=[("job.paths.hf_weights", "is not under any container volume")]),
        case("dotdot", ("job.paths.logs", "/apps/../etc"), expect=[("job.paths.logs", "must not contain '..'")]),
        case("space", ("job.paths.logs", "/apps/a b"), expect=[("job.paths.logs", "may contain only")]),
        case("relative", ("job.paths.logs", "apps/logs"), expect=[("job.paths.logs", "must be an absolute path")]),
        case("identity", ("ssh.identity", "~/.ssh/id;rm"), expect=[("ssh.identity", "may contain only")]),
    ]  # fmt: skip


@table
def yaml_1_1_numbers(tmp: Path) -> list[Case]:
    # Sexagesimal (1:40 = 100) and leading-zero octal (010 = 8) are not read as numbers.
    text = BASE_TEXT.replace("port: 6000", "port: 1:40").replace("tp: 4", "tp: 04")
    return [Case("sexagesimal-and-octal", text, [("master.port", "valid integer (got '1:40')"), ("job.parallelism.tp", "valid integer (got '04')")])]


def test_yaml_numbers_read_as_yaml_1_2_does():
    from q7x2_deploy.yaml_source import parse_yaml

    spelled = {"1:40": "1:40", "010": "010", "0x10": 16, "0o17": 15, "12": 12, "1e-6": 1e-6, "1E6": 1e6, ".5": 0.5, "2.0.0": "2.0.0", ".": ".", ".inf": float("inf")}
    assert {t: parse_yaml(f"a: {t}\n").data["a"] for t in spelled} == spelled
    text = BASE_TEXT.replace("seq_length: 4096", "seq_length: 4096\n    lr: 1e-5")
    from q7x2_deploy.validation import validate_text

    inv, violations = validate_text(text)
    assert violations == [] and inv is not None and inv.job.training.lr == 1e-5


@table
def non_text_keys(tmp: Path) -> list[Case]:
    base = edited()
    return [
        Case("int-top", base + "1: 2\n", [("1", "a key must be text, YAML read this one as a number (1): quote it")]),
        Case("float-top", base + "1.5: 2\n", [("1.5", "as a number")]),
        Case("bool-env", edited(("job.env", {True: "1"})), [("job.env.true", "as a boolean (True)")]),
        Case("int-training", edited(("job.training", {**BASE["job"]["training"], 7: 1})), [("job.training.7", "as a number (7)")]),
    ]


def test_a_docker_run_too_long_for_a_remote_shell(tmp_path):
    env = {f"V{i}": "x" * 1000 for i in range(140)}
    text = edited(("job.env", env))
    f = tmp_path / "long.yaml"
    f.write_text(text)
    proc = run_cli("validate", str(f))
    assert_one_line_each(str(f), proc.returncode, proc.stderr, [("hosts[0]", "a remote shell takes at most 131071"), ("hosts[1]", "on npu-b")], line=False)


# --- messages ---------------------------------------------------------------------------------


@table
def unknown_keys(tmp: Path) -> list[Case]:
    names = ["int", "integer", "int_x", "function-after", "function-x", "constrained", "constrained-str", "list[int]", "str", "[key]", "a\nb", "é"]
    plain = {"int", "integer", "int_x", "function-after", "function-x", "constrained", "constrained-str", "str"}
    cases = [case(repr(n), (f"master.{n}", 1), expect=[(f"master.{n}" if n in plain else f"master.{n!r}", "unknown key")]) for n in names]
    cases += [case("host-" + n, (f"hosts.0.{n}", 1), expect=[(f"hosts[0].{n}", "unknown key")]) for n in ["int", "function-plain", "constrained"]]
    cases += [case("dev-key", ("container.int", 1), ("container.devices", 4), expect=[("container.int", "unknown key")])]
    return cases


@table
def one_line_messages(tmp: Path) -> list[Case]:
    return [
        case("name", ("hosts.0.name", "a\nb\nc"), expect=[("hosts[0].name", r"'a\nb\nc' is not a host name")]),
        case("master", ("master.host", "x\ny"), expect=[("master.host", r"'x\ny' is not a host name")]),
        case("long", ("hosts.0.name", "n" * 100_000), expect=[("hosts[0].name", "(100000 characters)")]),
        case("hf-nl", ("job.model", {"hf_config": "/tmp/a\nb.json"}), expect=[("job.model.hf_config", "not a usable local path")]),
        case("cfg-in-key", ("job", {**BASE["job"], "x\ny": 1}), expect=[(r"job.'x\ny'", "unknown key")]),
    ]  # fmt: skip


@table
def reported_once(tmp: Path) -> list[Case]:
    return [
        case("tokenizer", ("job.paths.hf_weights", "/elsewhere/hf"), expect=[("job.paths.hf_weights", "is not under any container volume")]),
        case("container-devices", ("container.devices", [0, 1, 2, 3, 4, 5, 6, 7, 7]), expect=[("container.devices", "lists an NPU more than once")]),
        case("host-devices", ("hosts.1.devices", [0, 1, 2, 3, 4, 5, 6, 7, 7]), expect=[("hosts[1].devices", "lists an NPU more than once")]),
    ]  # fmt: skip


@table
def config_json_errors(tmp_path: Path) -> list[Case]:
    cfgs = {
        "null.json": '{"num_hidden_layers": null, "hidden_size": 896, "intermediate_size": 4864, "num_attention_heads": 14, "vocab_size": 151936}',
        "str.json": '{"num_hidden_layers": "24", "hidden_size": 896, "intermediate_size": 4864, "num_attention_heads": 14, "vocab_size": 151936}',
        "bool.json": '{"num_hidden_layers": true, "hidden_size": 896, "intermediate_size": 4864, "num_attention_heads": 14, "vocab_size": 151936}',
        "nan.json": '{"num_hidden_layers": 24, "hidden_size": 896, "intermediate_size": 4864, "num_attention_heads": 14, "vocab_size": 151936, "rms_norm_eps": NaN}',
        "lacks.json": '{"hidden_size": 896}',
        "list.json": "[1, 2]",
    }
    expect = {
        "null.json": "num_hidden_layers: Input should be a valid integer (got None)",
        "str.json": "num_hidden_layers: Input should be a valid integer (got '24')",
        "bool.json": "num_hidden_layers: Input should be a valid integer (got True)",
        "nan.json": "rms_norm_eps: Input should be a finite number",
        "lacks.json": "lacks num_hidden_layers, intermediate_size, num_attention_heads, vocab_size",
        "list.json": "expected a JSON object",
    }
    cases = []
    for name, content in cfgs.items():
        (tmp_path / name).write_text(content)
        cases.append(case(name, ("job.model", {"hf_config": str(tmp_path / name)}), expect=[("job.model", f"{tmp_path / name}: {expect[name]}")]))
    return cases


@pytest.mark.parametrize("distance", [1, 5, 30])
def test_an_unterminated_quote_is_reported_where_it_opens(tmp_path, distance):
    lines = BASE_TEXT.splitlines()
    i = next(n for n, ln in enumerate(lines) if ln.endswith("name: npu-a"))
    lines[i] = lines[i].replace("npu-a", '"npu-a')
    # A later quote closes the runaway string `distance` lines below (the YAML may then even be
    # valid, with one long name), or nothing does: either way every line names the opening line.
    j = min(i + distance, len(lines) - 1)
    if distance < 30:
        lines[j] += '  # "'
    f = tmp_path / "quote.yaml"
    f.write_text("\n".join(lines) + "\n")
    proc = run_cli("validate", str(f))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    out = proc.stderr.splitlines()
    assert out and all(ln.startswith(f"{f}:{i + 1}: ") for ln in out), proc.stderr
    if distance == 30:
        assert len(out) == 1 and "quote" in out[0]


def test_unclosed_flow_collection_is_reported_where_it_opens(tmp_path):
    text = BASE_TEXT.replace("volumes: [/apps, /home]", "volumes: [/apps, /home")
    line = next(n for n, ln in enumerate(text.splitlines(), 1) if "volumes: [/apps, /home" in ln)
    check_cases(tmp_path, [Case("flow", text, [("(top level)", "")])], in_process=True)
    proc = run_cli("validate", str(next(tmp_path.glob("case*.yaml"))))
    assert proc.stderr.split(":")[1] == str(line), proc.stderr


# --- plan: the human-readable output --------------------------------------------------------


def test_plan_prints_every_docker_run_whole(tmp_path):
    from q7x2_deploy.validation import load_inventory
    from q7x2_deploy.plan import build_plan, shell_line

    f = tmp_path / "inv.yaml"
    f.write_text(edited(("job.env", {"HCCL_CONNECT_TIMEOUT": "1200", "LONG": "v" * 60_000})))
    proc = run_cli("plan", str(f), timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    plan = build_plan(load_inventory(f))
    for host in plan.hosts:
        for step in host.steps:
            assert shell_line(step.docker_run) in out, f"{host.name} {step.name}: the docker run line is not printed whole"


# --- every table: in process, and all together through the real CLI under the limits --------


@pytest.mark.parametrize("name", sorted(TABLES))
def test_table(tmp_path, name):
    check_cases(tmp_path, TABLES[name](tmp_path), in_process=True)


@pytest.mark.slow
def test_every_table_through_the_real_cli(tmp_path):
    cases = []
    for name, make in TABLES.items():
        d = tmp_path / name
        d.mkdir()
        cases += make(d)
    assert len(cases) > 300
    check_cases(tmp_path, cases)
