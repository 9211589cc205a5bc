"""The attn command's .npy subcommands, run as a user would: inputs made by
numpy, results compared with the independent float64 references of the
Python binding's tests, and malformed files that must give exit code 2 and
a message naming the file, never a crash. ATTN_CLI names the binary."""
import os
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "bindings", "python", "tests"))
import reference as ref  # noqa: E402

CLI = os.environ.get("ATTN_CLI")
pytestmark = pytest.mark.skipif(not CLI, reason="ATTN_CLI not set (ctest sets it)")
TOL = dict(rtol=1e-4, atol=2e-5)


def attn(*args, env=None):
    r = subprocess.run([CLI] + [str(a) for a in args], capture_output=True, text=True,
                       env=env, timeout=60)
    assert r.returncode >= 0, "killed by signal %d: %s" % (-r.returncode, r.stderr)
    return r


def ok(*args):
    r = attn(*args)
    assert r.returncode == 0, r.stderr
    return r


def save(tmp_path, name, a, **kw):
    p = tmp_path / name
    with open(p, "wb") as f:
        np.lib.format.write_array(f, np.asarray(a), **kw)
    return p


def close(got, want, **tol):
    np.testing.assert_allclose(np.asarray(got, np.float64), want, **(tol or TOL))


@pytest.fixture
def rng():
    return np.random.default_rng(7)


# ---- results ----

def test_softmax(tmp_path, rng):
    x = rng.standard_normal((2, 3, 11)).astype(np.float32)
    inp, out = save(tmp_path, "x.npy", x), tmp_path / "y.npy"
    ok("softmax", inp, "-o", out)
    y = np.load(out)
    assert y.dtype == np.float32 and y.shape == x.shape
    close(y, ref.softmax(x))
    ok("softmax", inp, "-o", out, "--log", "--scale", "0.5")
    close(np.load(out), ref.softmax(x, scale=0.5, log=True))
    m = rng.standard_normal((3, 11)).astype(np.float32)
    ok("softmax", inp, "--mask", save(tmp_path, "m.npy", m), "--output=%s" % out)
    close(np.load(out), ref.softmax(x, mask=m))
    keep = rng.random((11,)) > 0.4
    ok("softmax", inp, "-o", out, "--mask", save(tmp_path, "b.npy", keep))
    close(np.load(out), ref.softmax(x, bool_mask=keep))


def test_npy_versions_orders_and_float64(tmp_path, rng):
    x = rng.standard_normal((4, 6))
    out = tmp_path / "y.npy"
    for i, version in enumerate([(1, 0), (2, 0), (3, 0)]):
        for order, arr in (("C", x), ("F", np.asfortranarray(x))):
            p = save(tmp_path, "x%d%s.npy" % (i, order), arr.astype(np.float32),
                     version=version)
            ok("softmax", p, "-o", out)
            close(np.load(out), ref.softmax(x.astype(np.float32)))
    ok("softmax", save(tmp_path, "x64.npy", np.asfortranarray(x)), "-o", out)
    close(np.load(out), ref.softmax(x))
    x4 = np.asfortranarray(rng.standard_normal((2, 3, 4, 5)))
    ok("softmax", save(tmp_path, "x4.npy", x4), "-o", out)
    close(np.load(out), ref.softmax(x4))


def test_float16_inputs_widen_exactly(tmp_path, rng):
    x = rng.standard_normal((5, 9)).astype(np.float16)
    out = tmp_path / "y.npy"
    ok("softmax", save(tmp_path, "x16.npy", x), "-o", out)
    assert np.load(out).dtype == np.float32
    close(np.load(out), ref.softmax(x.astype(np.float64)))
    q, k, v = (rng.standard_normal((1, 2, 6, 8)).astype(np.float16) for _ in range(3))
    ok("sdpa", save(tmp_path, "q.npy", q), save(tmp_path, "k.npy", k),
       save(tmp_path, "v.npy", v), "-o", out)
    want = ref.sdpa(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64))
    close(np.load(out), want[0])


@pytest.mark.parametrize("layout", ["interleaved", "concat", "concat-shifted", "cos-sin"])
def test_pe(tmp_path, layout):
    out = tmp_path / "pe.npy"
    ok("pe", "--len", 9, "--dim", 10, "--layout", layout, "-o", out)
    close(np.load(out), ref.sinusoidal(9, 10, layout), atol=2e-6)
    ok("pe", "--len", 4, "--dim", 7, "--layout", layout, "--base", 100, "--offset", 2.5,
       "-o", out)
    close(np.load(out), ref.sinusoidal(4, 7, layout, base=100.0, offset=2.5), atol=2e-6)


def test_rope(tmp_path, rng):
    x = rng.standard_normal((2, 3, 5, 8)).astype(np.float32)
    inp, out = save(tmp_path, "x.npy", x), tmp_path / "y.npy"
    ok("rope", inp, "-o", out)
    close(np.load(out), ref.rope(x), atol=2e-6)
    ok("rope", inp, "-o", out, "--style", "interleaved", "--theta", 500, "--rotary-dim", 4,
       "--offset", 3)
    pos = np.broadcast_to(np.arange(3, 8), (2, 5))
    close(np.load(out), ref.rope(x, "interleaved", 4, 500.0, pos), atol=2e-6)
    blhd = np.ascontiguousarray(x.transpose(0, 2, 1, 3))
    ok("rope", save(tmp_path, "t.npy", blhd), "-o", out, "--layout", "blhd")
    close(np.load(out).transpose(0, 2, 1, 3), ref.rope(x), atol=2e-6)
    ok("rope", save(tmp_path, "u.npy", x[0]), "-o", out)
    close(np.load(out), ref.rope(x[:1])[0], atol=2e-6)


def test_sdpa(tmp_path, rng):
    q = rng.standard_normal((2, 4, 5, 8)).astype(np.float32)
    k = rng.standard_normal((2, 2, 7, 8)).astype(np.float32)
    v = rng.standard_normal((2, 2, 7, 3)).astype(np.float32)
    files = [save(tmp_path, n + ".npy", a) for n, a in (("q", q), ("k", k), ("v", v))]
    out, lse, w = tmp_path / "o.npy", tmp_path / "lse.npy", tmp_path / "w.npy"
    ok("sdpa", *files, "-o", out)
    close(np.load(out), ref.sdpa(q, k, v)[0])
    for align in ("top-left", "bottom-right"):
        ok("sdpa", *files, "-o", out, "--causal", "--align", align, "--lse", lse,
           "--weights", w, "--scale", 0.2)
        want = ref.sdpa(q, k, v, causal=True, align=align, scale=0.2)
        close(np.load(out), want[0])
        close(np.load(lse), want[1])
        close(np.load(w), want[2])
    m = rng.standard_normal((5, 7)).astype(np.float32)
    ok("sdpa", *files, "-o", out, "--mask", save(tmp_path, "m.npy", m))
    close(np.load(out), ref.sdpa(q, k, v, mask=m)[0])
    keep = rng.random((2, 1, 5, 7)) > 0.3
    ok("sdpa", *files, "-o", out, "--mask", save(tmp_path, "b.npy", keep.astype(np.uint8)))
    close(np.load(out), ref.sdpa(q, k, v, bool_mask=keep)[0])
    t = [save(tmp_path, n + "t.npy", np.ascontiguousarray(a.transpose(0, 2, 1, 3)))
         for n, a in (("q", q), ("k", k), ("v", v))]
    ok("sdpa", *t, "-o", out, "--layout", "blhd", "--causal=bottom-right")
    got = np.load(out)
    assert got.shape == (2, 5, 4, 3)
    close(got.transpose(0, 2, 1, 3), ref.sdpa(q, k, v, causal=True, align="bottom-right")[0])
    u = [save(tmp_path, n + "u.npy", a[0]) for n, a in (("q", q), ("k", k), ("v", v))]
    ok("sdpa", *u, "-o", out, "--lse", lse)
    want = ref.sdpa(q[:1], k[:1], v[:1])
    close(np.load(out), want[0][0])
    close(np.load(lse), want[1][0])


# ---- usage ----

@pytest.mark.parametrize("cmd", ["softmax", "pe", "rope", "sdpa"])
def test_help(cmd):
    r = ok(cmd, "--help")
    assert r.stdout.startswith("usage: attn " + cmd)
    assert "Exit status" in r.stdout


def test_top_level_help():
    r = ok("--help")
    for cmd in ("softmax", "pe", "rope", "sdpa"):
        assert "attn " + cmd in r.stdout


@pytest.mark.parametrize("args", [
    ["softmax"], ["softmax", "x.npy"], ["softmax", "x.npy", "-o"],
    ["softmax", "x.npy", "-o", "y.npy", "--scale", "abc"],
    ["softmax", "x.npy", "-o", "y.npy", "--frobnicate"],
    ["pe", "--len", "3", "-o", "y.npy"], ["pe", "--len", "-3", "--dim", "4", "-o", "y.npy"],
    ["pe", "--len", "3", "--dim", "4", "--layout", "diagonal", "-o", "y.npy"],
    ["rope", "x.npy", "-o", "y.npy", "--style", "sideways"],
    ["rope", "x.npy", "-o", "y.npy", "--offset", "1.5"],
    ["sdpa", "q.npy", "k.npy", "-o", "o.npy"],
    ["sdpa", "q.npy", "k.npy", "v.npy", "-o", "o.npy", "--causal", "diagonal"],
    ["sdpa", "q.npy", "k.npy", "v.npy", "w.npy", "-o", "o.npy"],
])
def test_usage_errors(tmp_path, args):
    r = attn(*args)
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith("attn " + args[0]) and "--help" in r.stderr


# ---- bad input ----

def header_file(tmp_path, name, header, data=b"", version=1):
    h = header.encode()
    pad = (-(10 + len(h) + 1)) % 64
    h = h + b" " * pad + b"\n"
    pre = b"\x93NUMPY" + bytes([version, 0]) + (
        len(h).to_bytes(2, "little") if version == 1 else len(h).to_bytes(4, "little"))
    p = tmp_path / name
    p.write_bytes(pre + h + data)
    return p


def bad_files(tmp_path):
    good = save(tmp_path, "good.npy", np.ones((3, 4), np.float32)).read_bytes()
    f32 = np.ones(12, np.float32).tobytes()
    cases = {
        "truncated data": (good[:-5], "truncated"),
        "truncated header": (good[:40], "truncated"),
        "magic only": (good[:8], "too short"),
        "empty": (b"", "too short"),
        "not npy": (b"hello world, this is not numpy", "not an .npy"),
        "version 4": (good[:6] + b"\x04\x00" + good[8:], "version 4.0"),
        "extra data": (good + b"\0" * 4, "lies"),
    }
    paths = {}
    for name, (data, why) in cases.items():
        p = tmp_path / (name.replace(" ", "_") + ".npy")
        p.write_bytes(data)
        paths[name] = (p, why)
    hdr = {
        "shape lies": ("{'descr': '<f4', 'fortran_order': False, 'shape': (4, 4), }", f32,
                       "truncated"),
        "int64": ("{'descr': '<i8', 'fortran_order': False, 'shape': (12,), }",
                  np.ones(12, np.int64).tobytes(), "'<i8' is not supported"),
        "complex": ("{'descr': '<c8', 'fortran_order': False, 'shape': (12,), }", f32 * 2,
                    "not supported"),
        "big-endian": ("{'descr': '>f4', 'fortran_order': False, 'shape': (12,), }", f32,
                       "big-endian"),
        "5 dims": ("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2, 1, 2, 3), }",
                   f32, "5 dims"),
        "scalar": ("{'descr': '<f4', 'fortran_order': False, 'shape': (), }", f32[:4],
                   "scalar"),
        "empty shape": ("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 0), }", b"",
                        "empty"),
        "negative dim": ("{'descr': '<f4', 'fortran_order': False, 'shape': (-3, 4), }", f32,
                         "negative"),
        "huge dim": ("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999,"
                     " 4), }", f32, "exceeds"),
        "overflow": ("{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776, "
                     "1099511627776), }", f32, "too large"),
        "missing key": ("{'descr': '<f4', 'shape': (12,), }", f32, "missing key"),
        "unknown key": ("{'descr': '<f4', 'fortran_order': False, 'shape': (12,), 'x': 1}",
                        f32, "unknown key"),
        "syntax": ("{'descr': '<f4' 'fortran_order': False, 'shape': (12,), }", f32,
                   "bad header"),
        "unterminated": ("{'descr': '<f4, 'fortran_order': False, 'shape': (12,)}", f32,
                         "bad header"),
        "structured": ("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (12,), }",
                       f32, "structured"),
        "fortran yes": ("{'descr': '<f4', 'fortran_order': Yes, 'shape': (12,), }", f32,
                        "True or False"),
        "v2 lies": ("{'descr': '<f4', 'fortran_order': False, 'shape': (13,), }", f32,
                    "truncated"),
    }
    for name, (h, data, why) in hdr.items():
        p = header_file(tmp_path, name.replace(" ", "_") + ".npy", h, data,
                        version=2 if name.startswith("v2") else 1)
        paths[name] = (p, why)
    return paths


def test_malformed_files(tmp_path):
    out = tmp_path / "out.npy"
    for name, (path, why) in bad_files(tmp_path).items():
        r = attn("softmax", path, "-o", out)
        assert r.returncode == 2, (name, r.stderr)
        assert str(path) in r.stderr and why in r.stderr, (name, r.stderr)
        assert not out.exists(), name


def test_wrong_dtype_for_the_argument(tmp_path):
    out = tmp_path / "out.npy"
    b = save(tmp_path, "bool.npy", np.ones((3, 4), bool))
    r = attn("softmax", b, "-o", out)
    assert r.returncode == 2 and "bool" in r.stderr and "float" in r.stderr
    i8 = save(tmp_path, "i8.npy", np.ones((3, 4), np.int8))
    x = save(tmp_path, "x.npy", np.ones((3, 4), np.float32))
    r = attn("softmax", x, "--mask", i8, "-o", out)
    assert r.returncode == 2 and str(i8) in r.stderr and "|i1" in r.stderr


def test_float64_past_float32_range(tmp_path):
    # 1e39 became inf in float32, then a NaN row, with exit status 0; an
    # additive mask's finfo(float64).min still masks (-inf).
    out = tmp_path / "out.npy"
    big = save(tmp_path, "big.npy", np.array([[1.0, 1e39, 2.0]]))
    r = attn("softmax", big, "-o", out)
    assert r.returncode == 2 and "big.npy" in r.stderr and "past float32's range" in r.stderr
    assert "element 1" in r.stderr and not out.exists()
    x = save(tmp_path, "x.npy", np.array([[1.0, 2.0, 3.0]]))
    m = save(tmp_path, "m.npy", np.array([[0.0, np.finfo(np.float64).min, 0.0]]))
    ok("softmax", x, "--mask", m, "-o", out)
    close(np.load(out), ref.softmax(np.array([[1.0, 2.0, 3.0]]),
                                    mask=np.array([[0.0, -np.inf, 0.0]])))
    r = attn("softmax", x, "--mask", save(tmp_path, "mp.npy", np.array([[0.0, 1e300, 0.0]])),
             "-o", out)
    assert r.returncode == 2 and "mp.npy" in r.stderr and "past float32's range" in r.stderr


def test_missing_file_and_unwritable_output(tmp_path):
    r = attn("softmax", tmp_path / "nope.npy", "-o", tmp_path / "y.npy")
    assert r.returncode == 2 and "nope.npy" in r.stderr and "cannot open" in r.stderr
    x = save(tmp_path, "x.npy", np.ones((2, 2), np.float32))
    r = attn("softmax", x, "-o", tmp_path / "no" / "dir" / "y.npy")
    assert r.returncode == 2 and "cannot create" in r.stderr


def _file_size_limit(limit):
    # Run in the child: writes past `limit` bytes fail with EFBIG (SIGXFSZ,
    # which would kill the process instead, is ignored across the exec).
    def set_limit():
        import resource
        import signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return set_limit


def test_output_over_an_input_is_replaced_only_when_complete(tmp_path, rng):
    x = rng.standard_normal((64, 64)).astype(np.float32)
    p = save(tmp_path, "x.npy", x)
    os.chmod(p, 0o640)
    before = p.read_bytes()
    # A write that fails midway (the file size limit) leaves the input whole.
    r = subprocess.run([CLI, "softmax", str(p), "-o", str(p)], capture_output=True, text=True,
                       preexec_fn=_file_size_limit(4096), timeout=60)
    assert r.returncode == 2 and "write error" in r.stderr, r.stderr
    assert p.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["x.npy"]  # no file left beside it
    # A write that succeeds replaces it, keeping its permissions.
    ok("softmax", p, "-o", p)
    close(np.load(p), ref.softmax(x))
    assert os.stat(p).st_mode & 0o777 == 0o640
    assert sorted(os.listdir(tmp_path)) == ["x.npy"]


def test_shapes_libattn_refuses(tmp_path, rng):
    q = save(tmp_path, "q.npy", rng.standard_normal((1, 2, 3, 8)).astype(np.float32))
    k = save(tmp_path, "k.npy", rng.standard_normal((1, 2, 4, 6)).astype(np.float32))
    out = tmp_path / "o.npy"
    r = attn("sdpa", q, k, k, "-o", out)
    assert r.returncode == 2 and "q.npy" in r.stderr and "k.shape[3]" in r.stderr
    assert "ATTN_ERR_SHAPE" in r.stderr and not out.exists()
    m = save(tmp_path, "m.npy", np.zeros((5, 5), np.float32))
    r = attn("softmax", q, "--mask", m, "-o", out)
    assert r.returncode == 2 and "m.npy" in r.stderr and "mask" in r.stderr
    r = attn("rope", save(tmp_path, "r.npy", np.ones((2, 3), np.float32)), "-o", out)
    assert r.returncode == 2 and "r.npy" in r.stderr and "2 dims" in r.stderr
    r = attn("rope", q, "-o", out, "--rotary-dim", 3)
    assert r.returncode == 2 and "rotary_dim" in r.stderr
    r = attn("pe", "--len", 3, "--dim", 4, "--base", 0.5, "-o", out)
    assert r.returncode == 2 and "base" in r.stderr


# ---- bench: not a subcommand; attn-bench is its own installed command ----

def test_bench_points_at_attn_bench():
    r = attn("bench")
    assert r.returncode == 1 and "unknown subcommand 'bench'" in r.stderr
    assert "attn-bench" in ok("--help").stdout


# ---- pool (issue 11) ----

def test_pool(tmp_path, rng):
    x = rng.standard_normal((3, 2, 9, 4)).astype(np.float32)
    s = rng.standard_normal((3, 9)).astype(np.float32)
    keep = rng.random((3, 9)) > 0.3
    keep[2] = False
    inp, out = save(tmp_path, "x.npy", x), tmp_path / "y.npy"
    sp, kp = save(tmp_path, "s.npy", s), save(tmp_path, "k.npy", keep)
    ok("pool", inp, "-o", out)
    close(np.load(out), x.sum(2))
    for mode in ("sum", "mean", "max", "weighted"):
        args = ["pool", inp, "-o", out, "--mode", mode, "--keep", kp]
        if mode == "weighted":
            args += ["--scores", sp]
        ok(*args)
        y = np.load(out)
        assert y.shape == (3, 2, 4) and y.dtype == np.float32
        for b in range(3):
            xs = x[b][:, keep[b]].astype(np.float64)
            if not keep[b].any():
                assert not y[b].any()
                continue
            if mode == "weighted":
                w = np.exp(s[b][keep[b]] - s[b][keep[b]].max())
                want = np.einsum("l,hld->hd", w / w.sum(), xs)
            else:
                want = {"sum": xs.sum(1), "mean": xs.mean(1), "max": xs.max(1)}[mode]
            close(y[b], want)
    ok("pool", save(tmp_path, "x3.npy", x[:, 0]), "-o", out, "--mode", "mean")
    close(np.load(out), x[:, 0].mean(1))


def test_pool_usage_and_refusals(tmp_path, rng):
    r = ok("pool", "--help")
    assert r.stdout.startswith("usage: attn pool") and "Exit status" in r.stdout
    assert "attn pool" in ok("--help").stdout
    inp = save(tmp_path, "x.npy", np.zeros((2, 3, 4), np.float32))
    assert attn("pool", inp, "-o", tmp_path / "y.npy", "--mode", "median").returncode == 1
    assert attn("pool", inp).returncode == 1
    r = attn("pool", inp, "-o", tmp_path / "y.npy", "--mode", "weighted")
    assert r.returncode == 2 and "scores" in r.stderr
    r = attn("pool", save(tmp_path, "v.npy", np.zeros(4, np.float32)), "-o", tmp_path / "y.npy")
    assert r.returncode == 2 and "dims" in r.stderr


# ---- issue 9: options, stdout, "--", the same conventions everywhere ----

def test_sdpa_options(tmp_path, rng):
    q = rng.standard_normal((2, 4, 3, 8)).astype(np.float32)
    k = rng.standard_normal((2, 2, 9, 8)).astype(np.float32)
    v = rng.standard_normal((2, 2, 9, 5)).astype(np.float32)
    files = [save(tmp_path, n + ".npy", a) for n, a in (("q", q), ("k", k), ("v", v))]
    out = tmp_path / "o.npy"
    slopes = ref.alibi_slopes(4, 8.0)
    cases = [
        (["--causal", "--align", "bottom-right", "--kv-lens", "7,9"],
         dict(causal=True, align="bottom-right", kv_lens=[7, 9])),
        (["--window", "2,1"], dict(window=(2, 1))),
        (["--window", "3", "--causal"], dict(window=(3, 0), causal=True)),
        (["--alibi", "8"], dict(alibi=slopes)),  # ALiBi without causal
        (["--alibi", "8", "--causal", "--align", "bottom-right"],
         dict(alibi=slopes, causal=True, align="bottom-right")),
        (["--softcap", "2.5", "--sinks", "0.5,-1,2,0"],
         dict(softcap=2.5, sinks=[0.5, -1.0, 2.0, 0.0])),
        (["--threads", "3", "--causal"], dict(causal=True)),
    ]
    for args, kw in cases:
        ok("sdpa", *files, "-o", out, *args)
        close(np.load(out), ref.sdpa(q, k, v, **kw)[0])
    # Lists must match the shapes; values must be numbers of the right kind.
    r = attn("sdpa", *files, "-o", out, "--kv-lens", "7")
    assert r.returncode == 2 and "kv-lens" in r.stderr and "2 batch entries" in r.stderr
    r = attn("sdpa", *files, "-o", out, "--sinks", "1,2")
    assert r.returncode == 2 and "4 heads" in r.stderr
    for bad in (["--kv-lens", "7,x"], ["--kv-lens", "7.5,9"], ["--window", "-1"],
                ["--window", "9007199254740993"], ["--kv-lens", "7,9007199254740992"],
                ["--alibi", "0"], ["--softcap", "-1"], ["--threads", "-1"],
                ["--scale", "1e-50"], ["--scale", "1e300"]):
        r = attn("sdpa", *files, "-o", out, *bad)
        assert r.returncode == 1, (bad, r.stderr)
    r = attn("softmax", files[0], "-o", out, "--scale", "1e-50")
    assert r.returncode == 1 and "rounds to 0" in r.stderr


def test_rope_positions(tmp_path, rng):
    x = rng.standard_normal((2, 3, 4, 8)).astype(np.float32)
    inp, out = save(tmp_path, "x.npy", x), tmp_path / "y.npy"
    pos = np.array([[5, 0, 9, 2], [1, 1, 30, 4]])
    ok("rope", inp, "-o", out, "--positions", ",".join(str(p) for p in pos.ravel()))
    close(np.load(out), ref.rope(x, positions=pos), atol=2e-6)
    r = attn("rope", inp, "-o", out, "--positions", "1,2,3")
    assert r.returncode == 2 and "B * L = 8" in r.stderr
    # strtod rounded 2^53 + 1 to 2^53: a silent wrong rotation.
    r = attn("rope", inp, "-o", out, "--positions", ",".join(["9007199254740993"] + ["0"] * 7))
    assert r.returncode == 1 and "2^53 - 1" in r.stderr


def test_output_to_stdout_and_double_dash(tmp_path, rng):
    import io
    x = rng.standard_normal((3, 6)).astype(np.float32)
    odd = save(tmp_path, "-x.npy", x)  # a file whose name starts with '-'
    r = subprocess.run([CLI, "softmax", "-o", "-", "--", odd.name], capture_output=True,
                       cwd=tmp_path, timeout=60)
    assert r.returncode == 0, r.stderr
    close(np.load(io.BytesIO(r.stdout)), ref.softmax(x))
    r = attn("softmax", "-o", tmp_path / "y.npy", "--", "--log")  # a file name after --
    assert r.returncode == 2 and "--log" in r.stderr


@pytest.mark.parametrize("cmd", ["softmax", "pe", "rope", "sdpa", "pool"])
def test_same_conventions_everywhere(tmp_path, cmd):
    # The same common options and exit codes in every subcommand.
    r = ok(cmd, "--help")
    for opt in ("-o, --output", "--threads", "Exit status: 0 success, 1 bad usage, 2 bad input"):
        assert opt in r.stdout, (cmd, opt)
    r = attn(cmd, "--frobnicate")
    assert r.returncode == 1 and "Try 'attn %s --help'" % cmd in r.stderr
    r = attn(cmd, "--threads", "x")
    assert r.returncode == 1
    if cmd != "pe":
        files = ["missing.npy"] * (3 if cmd == "sdpa" else 1)
        r = attn(cmd, *[tmp_path / f for f in files], "-o", tmp_path / "o.npy")
        assert r.returncode == 2 and "missing.npy" in r.stderr
