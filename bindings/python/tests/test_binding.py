import ctypes
import os
import subprocess
import sys
import signal
import threading
import time

import numpy as np
import pytest

import attn
from attn import _lib

HERE = os.path.dirname(os.path.abspath(__file__))
PKG = os.path.dirname(HERE)


def run_python(code, **env):
    e = dict(os.environ, PYTHONPATH=PKG, **env)
    return subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True)


def test_version_and_info():
    assert attn.version() // 10000 == attn.ABI_MAJOR
    assert attn.version_string().count(".") == 2
    assert isinstance(attn.blas_info(), str) and attn.blas_info()
    assert isinstance(attn.cpu_info(), str)
    assert os.path.exists(attn.LIBRARY_PATH) or attn.LIBRARY_PATH.startswith("libattn")
    if os.environ.get("ATTN_LIBRARY"):
        assert attn.LIBRARY_PATH == os.environ["ATTN_LIBRARY"]


def test_missing_library_is_a_clear_import_error():
    r = run_python("import attn", ATTN_LIBRARY="/nonexistent/libattn.so.0")
    assert r.returncode != 0
    assert "LibraryNotFound" in r.stderr and "/nonexistent/libattn.so.0" in r.stderr


def test_wrong_major_is_refused():
    fake = os.environ.get("ATTN_FAKE_MAJOR_LIB")
    if not fake:
        pytest.skip("ATTN_FAKE_MAJOR_LIB not set (ctest builds it)")
    r = run_python("import attn", ATTN_LIBRARY=fake)
    assert r.returncode != 0
    assert "libattn 1.0.0" in r.stderr and "major version 0" in r.stderr


def _c_sizes():
    """sizeof each params struct according to the library's _init()."""
    out = {}
    for cls, init in ((_lib.CtxOptions, "attn_ctx_options_init"),
                      (_lib.SoftmaxParams, "attn_softmax_params_init"),
                      (_lib.SinusoidalParams, "attn_sinusoidal_params_init"),
                      (_lib.RopeParams, "attn_rope_params_init"),
                      (_lib.SdpaParams, "attn_sdpa_params_init"),
                      (_lib.RopeCacheParams, "attn_rope_cache_params_init"),
                      (_lib.RopeCachedParams, "attn_rope_cached_params_init"),
                      (_lib.PoolParams, "attn_pool_params_init"),
                      (_lib.PoolAttentionParams, "attn_pool_attention_params_init"),
                      (_lib.SdpaBackwardParams, "attn_sdpa_backward_params_init"),
                      (_lib.MhaTorchParams, "attn_mha_torch_params_init"),
                      (_lib.MhaTorchForwardParams, "attn_mha_torch_forward_params_init"),
                      (_lib.MhaDecoderParams, "attn_mha_decoder_params_init")):
        fn = getattr(attn._api._LIB, init, None)
        if fn is None:
            continue
        buf = (ctypes.c_uint8 * 512)()
        ctypes.CDLL(attn.LIBRARY_PATH)[init](buf)
        out[cls] = ctypes.c_size_t.from_buffer(buf).value
        assert not any(buf[out[cls]:]), "%s wrote past its struct" % init
    return out


def test_struct_sizes_match_the_library():
    sizes = _c_sizes()
    assert _lib.SdpaParams in sizes
    for cls, size in sizes.items():
        assert ctypes.sizeof(cls) == size, cls.__name__
        assert cls().struct_size == size


def _ctypes_class(c_name):
    """The ctypes mirror of a C struct: attn_kv_cache_info -> KvCacheInfo."""
    return getattr(_lib, "".join(w.capitalize() for w in c_name.split("_")[1:]))


def test_struct_offsets_match_the_compiler():
    # tests/abi/layout_dump.c, shared with the Rust crate's layout test.
    dump = os.environ.get("ATTN_LAYOUT_DUMP")
    if not dump:
        pytest.skip("ATTN_LAYOUT_DUMP not set (ctest builds it)")
    lines = subprocess.run([dump], capture_output=True, text=True, check=True).stdout
    n = 0
    for line in lines.splitlines():
        kind, what, *values = line.split()
        if kind == "size":
            assert ctypes.sizeof(_ctypes_class(what)) == int(values[0]), what
        elif kind == "field":
            c_name, field = what.split(".")
            f = getattr(_ctypes_class(c_name), field)
            assert (f.offset, f.size) == (int(values[0]), int(values[1])), what
        n += 1
    assert n > 150


def test_zero_filled_struct_means_defaults():
    p = _lib.SdpaParams()
    assert p.struct_size == ctypes.sizeof(p)
    assert p.scale == 0 and p.causal == 0 and not p.mask


def test_attn_error():
    e = attn.AttnError("ATTN_ERR_SHAPE", "attn_sdpa: k.shape[3] = 4 but ...", 3)
    assert str(e) == "ATTN_ERR_SHAPE: attn_sdpa: k.shape[3] = 4 but ..."
    assert e.status == "ATTN_ERR_SHAPE" and e.code == 3 and e.message.startswith("attn_sdpa")
    assert isinstance(e, Exception)


def test_context_threads_and_close():
    with attn.Context(num_threads=1) as ctx:
        assert ctx.num_threads == 1
        q = np.ones((1, 1, 2, 4), np.float32)
        assert ctx.sdpa(q, q, q).shape == (1, 1, 2, 4)
        assert ctx.last_error() == ""
    # The message names the call (it said only "the attn.Context is closed").
    with pytest.raises(ValueError, match="^sdpa: the attn.Context is closed"):
        ctx.sdpa(q, q, q)
    with pytest.raises(ValueError, match="^KVCache: the attn.Context is closed"):
        attn.KVCache(1, 1, 4, capacity=2, context=ctx)
    with pytest.raises(ValueError, match="^Context.num_threads: the attn.Context is closed"):
        ctx.num_threads
    ctx.close()  # idempotent
    assert attn.Context(3).num_threads == 3
    assert attn.Context().num_threads >= 1
    with pytest.raises(attn.AttnError) as e:
        attn.Context(num_threads=5000)
    assert e.value.status == "ATTN_ERR_INVALID_ARG"


def test_context_errors_are_per_context():
    a, b = attn.Context(1), attn.Context(1)
    q = np.ones((1, 1, 2, 4), np.float32)
    with pytest.raises(attn.AttnError):
        a.sdpa(q, q[..., :2], q)
    assert "attn_sdpa" in a.last_error() and b.last_error() == ""


def test_context_in_use_by_another_thread():
    ctx = attn.Context(1)
    ctx._busy.acquire()  # as if another thread were inside an op
    try:
        with pytest.raises(RuntimeError, match="another thread"):
            ctx.sdpa(*(np.ones((1, 1, 1, 2), np.float32),) * 3)
    finally:
        ctx._busy.release()


def test_default_context_is_per_thread():
    seen = {}

    def work(i):
        rng = np.random.default_rng(i)
        q = rng.standard_normal((1, 2, 16, 8)).astype(np.float32)
        for _ in range(20):
            out = attn.sdpa(q, q, q, causal=True)
        seen[i] = (attn.default_context(), out)  # kept alive, so ids stay distinct

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(v[0]) for v in seen.values()}) == 4
    for i, (_, out) in seen.items():
        q = np.random.default_rng(i).standard_normal((1, 2, 16, 8)).astype(np.float32)
        np.testing.assert_array_equal(out, attn.Context(1).sdpa(q, q, q, causal=True))


def test_set_num_threads():
    old = attn.get_num_threads()
    try:
        attn.set_num_threads(1)
        assert attn.get_num_threads() == 1
        attn.set_num_threads(2)
        assert attn.get_num_threads() == 2
        with pytest.raises(ValueError):
            attn.set_num_threads(-1)
    finally:
        attn.set_num_threads(0)
    assert attn.get_num_threads() >= 1 and old >= 1


def test_set_num_threads_keeps_objects_of_the_old_default_context():
    # set_num_threads closed the thread's default context at its next use,
    # freeing every cache and layer made on it: their next call raised
    # "the attn.Context is closed" and the cached keys were gone.
    x = np.ones((1, 1, 2, 8), np.float32)
    try:
        attn.set_num_threads(1)
        cache = attn.KVCache(1, 1, 8, capacity=8)
        cache.append(x, x)
        old = attn.default_context()
        attn.set_num_threads(2)
        assert attn.get_num_threads() == 2 and attn.default_context() is not old
        cache.append(x, x)
        assert cache.lengths.tolist() == [4]
        k, v = cache.read(0)
        assert np.array_equal(k, np.ones((1, 4, 8), np.float32))
        cache.close()
    finally:
        attn.set_num_threads(0)


def _counting_context():
    """A Context whose allocator counts live blocks (through libc malloc)."""
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    live = {"n": 0}

    def alloc(user, size):
        live["n"] += 1
        return libc.malloc(size)

    def free(user, ptr):
        live["n"] -= 1
        libc.free(ptr)

    cbs = (_lib.ALLOC_FN(alloc), _lib.FREE_FN(free))
    opts = _lib.CtxOptions(num_threads=1, alloc=cbs[0], free=cbs[1])
    h = ctypes.c_void_p()
    assert attn._api._LIB.attn_ctx_create(ctypes.byref(h), ctypes.byref(opts)) == 0
    ctx = attn.Context.__new__(attn.Context)
    ctx._handle, ctx._busy, ctx._callbacks = h, threading.Lock(), cbs
    ctx._deferred = []
    return ctx, live


def test_tensors_are_freed_after_each_call():
    # Wrapped handles are freed after every call, failed ones included: the
    # context's memory does not grow. (Freed handles stay with the context
    # for reuse, so the warm-up is the largest call: 6 handles.)
    ctx, live = _counting_context()
    q = np.ones((1, 1, 2, 4), np.float32)
    ctx.sdpa(q, q, q, return_lse=True, return_weights=True)  # warm the scratch
    before = live["n"]
    for _ in range(50):
        with pytest.raises(attn.AttnError):
            ctx.sdpa(q, q[..., :2], q)
        ctx.sdpa(q, q, q, return_lse=True, return_weights=True)
    assert live["n"] == before
    ctx.close()
    assert live["n"] == 0


def _every_op(ctx):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((64, 512)).astype(np.float32)
    q = rng.standard_normal((1, 4, 64, 32)).astype(np.float32)
    k = rng.standard_normal((1, 2, 256, 32)).astype(np.float32)
    return [ctx.softmax(x), ctx.log_softmax(x), ctx.sinusoidal(128, 64),
            ctx.sinusoidal_add(x[:64].reshape(2, 64, 256)),
            ctx.rope(q.copy()), ctx.alibi_slopes(8),
            ctx.sdpa(q, k, k, causal=True),
            ctx.sdpa(q[:, :1, :1], k[:, :1], k[:, :1]),
            ctx.sdpa_varlen(q[0].transpose(1, 0, 2).copy(), k[0].transpose(1, 0, 2).copy(),
                            k[0].transpose(1, 0, 2).copy(), [0, 30, 64], [0, 100, 256])]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork()")
@pytest.mark.skipif("tsan" in os.environ.get("LD_PRELOAD", ""),
                    reason="ThreadSanitizer cannot follow threads started after a fork")
def test_fork_after_use():
    """A process forked after using a context (multiprocessing, DataLoader
    workers, prefork servers) keeps using it and the module functions."""
    ctx = attn.Context(3)  # two worker threads
    want = _every_op(ctx)
    module_want = attn.softmax(want[0])
    pid = os.fork()
    if pid == 0:  # the child: no pytest here, only an exit status
        code = 1
        try:
            signal.alarm(60)
            got = _every_op(ctx)
            same = all(np.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(got, want))
            same = same and np.allclose(attn.softmax(want[0]), module_want)
            same = same and all(np.allclose(a, b, rtol=1e-5, atol=1e-6)
                                for a, b in zip(_every_op(attn.Context(2)), want))
            ctx.close()
            code = 0 if same else 2
        finally:
            os._exit(code)
    deadline = time.monotonic() + 120
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung")
        time.sleep(0.05)
    assert not os.WIFSIGNALED(status), "child killed by signal %d" % os.WTERMSIG(status)
    assert os.WEXITSTATUS(status) == 0, "child: 1 = an op raised, 2 = wrong result"
    np.testing.assert_array_equal(_every_op(ctx)[6], want[6])  # the parent's context still works
    ctx.close()


# ---- issue 9: inputs that used to give a silent wrong answer ----

def test_integer_mask_is_refused_not_added():
    # A Hugging Face attention_mask (int64, 1 = keep) added to the logits
    # would mask nothing.
    q = np.ones((1, 1, 2, 4), np.float32)
    hf = np.array([[1, 0]], np.int64)
    for m in (hf, hf.astype(np.int32), hf.astype(np.uint16)):
        with pytest.raises(TypeError, match="mask != 0"):
            attn.sdpa(q, q, q, mask=m)
        with pytest.raises(TypeError, match="bool or uint8"):
            attn.softmax(np.ones((1, 2), np.float32), mask=m)
    # The documented conversion gives the keep-mask meaning.
    np.testing.assert_array_equal(attn.softmax(np.zeros((1, 2), np.float32), mask=hf != 0),
                                  [[1.0, 0.0]])
    np.testing.assert_array_equal(
        attn.softmax(np.zeros((1, 2), np.float32), mask=hf.astype(np.uint8)), [[1.0, 0.0]])


def test_scale_that_rounds_to_zero_is_refused():
    x = np.ones((1, 4), np.float32)
    q = np.ones((1, 1, 2, 4), np.float32)
    for s in (1e-50, -1e-46):
        with pytest.raises(ValueError, match="rounds to 0"):
            attn.softmax(x, scale=s)
        with pytest.raises(ValueError, match="rounds to 0"):
            attn.sdpa(q, q, q, scale=s)
    attn.softmax(x, scale=1e-40)  # subnormal in float32, still not 0


def test_float64_past_float32_is_refused():
    x = np.array([[1e39, 0.0]])
    with pytest.raises(ValueError, match="float32's range"):
        attn.softmax(x)
    q = np.ones((1, 1, 2, 4))
    q[0, 0, 1, 2] = -1e300
    with pytest.raises(ValueError, match="float32's range"):
        attn.sdpa(q, q, q)
    # float64 within range is converted; the result is float32.
    out = attn.softmax(np.array([[0.0, np.log(3.0)]]))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.25, 0.75]], rtol=1e-6)
    # An additive float64 mask may use the most negative double (torch's
    # finfo(float64).min): it becomes -inf, i.e. masked.
    m = np.array([[0.0, np.finfo(np.float64).min]])
    np.testing.assert_array_equal(attn.softmax(np.zeros((1, 2)), mask=m), [[1.0, 0.0]])
    with pytest.raises(ValueError, match="float32's range"):
        attn.softmax(np.zeros((1, 2)), mask=np.array([[0.0, 1e300]]))
    # inf and NaN given as such pass through (they are not an overflow).
    assert np.isnan(attn.softmax(np.array([[np.nan, 0.0]]))).all()


def test_close_waits_for_a_running_op():
    ctx = attn.Context(1)
    q = np.random.default_rng(1).standard_normal((1, 8, 512, 64)).astype(np.float32)
    want = attn.Context(1).sdpa(q, q, q, causal=True)
    got, errors = {}, []
    started = threading.Event()

    def run():
        try:
            started.set()
            for _ in range(3):
                got["out"] = ctx.sdpa(q, q, q, causal=True)
        except (RuntimeError, ValueError) as e:  # closed before this call began
            errors.append(e)

    t = threading.Thread(target=run)
    t.start()
    started.wait()
    ctx.close()  # must not free the context under the running call
    t.join()
    if "out" in got:
        np.testing.assert_array_equal(got["out"], want)
    for e in errors:
        assert "closed" in str(e) or "in use" in str(e)
    with pytest.raises(ValueError, match="closed"):
        ctx.sdpa(q, q, q)


def test_int32_arguments_past_int32_are_refused():
    # ctypes would wrap them silently: rotary_dim 2**32 + 2 rotated 2 dims,
    # alibi_slopes(2**32 + 4) filled 4 slopes of its array.
    ctx = attn.Context(num_threads=1)
    x = np.ones((1, 1, 3, 8), np.float32)
    for r in (2 ** 32 + 2, -2 ** 31 - 1):
        with pytest.raises(ValueError, match="rotary_dim = %d does not fit an int32" % r):
            ctx.rope(x, rotary_dim=r)
    with pytest.raises(ValueError, match="int32"):
        ctx.alibi_slopes(2 ** 32 + 4)
    cos = np.ones((3, 2), np.float32)
    with pytest.raises(ValueError, match="int32"):
        ctx.rope_cached(np.ones((1, 3, 8), np.float32), cos, cos, num_heads=2 ** 32 + 2)
    with pytest.raises(ValueError, match="int32"):
        attn.Context(num_threads=2 ** 32 + 1)
    ctx.close()


def test_int64_arguments_past_int64_are_refused():
    # ctypes keeps an integer modulo 2^64: rope's offset 2**64 + 3 rotated by
    # 3, truncate(0, 2**64) emptied the sequence, a window of 2**64 + 1 keys
    # saw 1, capacity 2**64 + 16 made a 16-token cache.
    ctx = attn.Context(num_threads=1)
    x = np.ones((1, 1, 3, 8), np.float32)
    with pytest.raises(ValueError, match="offset = %d does not fit an int64" % (2 ** 64 + 3)):
        ctx.rope(x, offset=2 ** 64 + 3)
    with pytest.raises(ValueError, match="int64"):
        ctx.sdpa(x, x, x, window=(2 ** 64 + 1, 0))
    with pytest.raises(ValueError, match="int64"):
        attn.KVCache(1, 1, 8, capacity=2 ** 64 + 16, context=ctx)
    with pytest.raises(ValueError, match="int64"):
        attn.KVCache(1, 1, 8, capacity=np.uint64(2 ** 64 - 1), context=ctx)
    with pytest.raises(ValueError, match="int64"):
        ctx.rope_cache(8, 4, scaling="dynamic", factor=2.0, original_max_position=2 ** 64 + 4)
    cache = attn.KVCache(1, 1, 8, capacity=4, context=ctx)
    cache.append(x[:, :, :2], x[:, :, :2])
    for call in (lambda: cache.truncate(0, 2 ** 64), lambda: cache.truncate(2 ** 64, 0),
                 lambda: cache.reset(2 ** 64), lambda: cache.copy(2 ** 64, 0),
                 lambda: cache.read(0, start=-2 ** 64 + 1)):
        with pytest.raises(ValueError, match="KVCache.* does not fit an int64"):
            call()
    assert cache.lengths.tolist() == [2]
    cache.close()
    ctx.close()


def test_object_close_waits_for_a_call_on_its_context():
    # KVCache.close() (and a layer's) freed the cache at once while another
    # thread was inside a call on its context, which may be using it (the
    # binding's lock was held; libattn's own ATTN_ERR_BUSY came only once
    # the call was in C, and close ignored it): now it waits, as
    # Context.close does.
    ctx = attn.Context(num_threads=1)
    cache = attn.KVCache(1, 1, 4, capacity=4, context=ctx)
    x = np.ones((1, 1, 2, 4), np.float32)
    cache.append(x, x)
    entered, release, closed = threading.Event(), threading.Event(), threading.Event()

    def hold():  # another thread inside a call on ctx
        with ctx._call("test"):
            entered.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    assert entered.wait(10)
    closer = threading.Thread(target=lambda: (cache.close(), closed.set()))
    closer.start()
    try:
        assert not closed.wait(0.3)  # waiting, nothing freed
        assert cache._handle
    finally:
        release.set()
        holder.join()
        closer.join()
    assert closed.is_set() and not cache._handle
    cache.close()  # idempotent
    ctx.close()


def test_closed_object_says_closed():
    # A closed cache or layer is refused by the binding with "closed"; it
    # used to reach libattn with a NULL handle (ATTN_ERR_NULL_ARG, "cache is
    # NULL", though the caller passed an object).
    ctx = attn.Context(num_threads=1)
    x = np.ones((1, 1, 2, 4), np.float32)
    cache = attn.KVCache(1, 1, 4, capacity=4, context=ctx)
    cache.close()
    for call in (lambda: cache.append(x, x), lambda: cache.lengths,
                 lambda: cache.attend(x), lambda: cache.truncate(0, 0)):
        with pytest.raises(ValueError, match="KVCache is closed"):
            call()
    layer = attn.DecoderLayer(8, 2, context=ctx)
    layer.close()
    with pytest.raises(ValueError, match="DecoderLayer is closed"):
        layer(np.ones((1, 1, 8), np.float32), attn.KVCache(1, 2, 4, capacity=4, context=ctx))
    mha = attn.MultiheadAttention(8, 2, context=ctx)
    mha.close()
    with pytest.raises(ValueError, match="MultiheadAttention is closed"):
        mha.state_dict()
    ctx.close()


def test_object_collected_during_a_call_is_freed_after_it():
    # Collection (close from __del__) while a call runs on the context, in
    # this thread or another, neither waits (a deadlock in this thread) nor
    # frees under the call: the context frees it when the call ends.
    ctx = attn.Context(num_threads=1)
    x = np.ones((1, 1, 2, 4), np.float32)
    keep = attn.KVCache(1, 1, 4, capacity=4, context=ctx)
    keep.append(x, x)
    for make in (lambda: attn.KVCache(1, 1, 4, capacity=4, context=ctx),
                 lambda: attn.DecoderLayer(8, 2, context=ctx)):
        obj = make()
        with ctx._call("test"):
            obj.__del__()
            assert len(ctx._deferred) == 1 and not obj._handle
        assert ctx._deferred == []
    np.testing.assert_array_equal(keep.read(0)[0], x[0])
    ctx.close()


def test_integer_arguments_refuse_fractions():
    # An integer argument given as a non-integral number is refused, not cut
    # by int(): rope_cache(8, 4.5) made tables of 2 pairs, rope(offset=2.5)
    # rotated from position 2, softmax(axis=0.5) took axis 0, window
    # (2.5, 0) saw 2 keys back. (The int32 ones, through _int32, were
    # refused already.)
    ctx = attn.Context(num_threads=1)
    x = np.ones((1, 1, 3, 8), np.float32)
    cos = np.ones((3, 2), np.float32)
    cache = attn.KVCache(1, 1, 8, capacity=4, context=ctx)
    for call in (lambda: ctx.rope(x, rotary_dim=4.5),
                 lambda: ctx.alibi_slopes(2.5),
                 lambda: ctx.alibi_slopes(np.float32(3.25)),
                 lambda: ctx.rope_cached(np.ones((1, 3, 8), np.float32), cos, cos,
                                         num_heads=2.5),
                 lambda: attn.Context(num_threads=1.5),
                 lambda: cache.append(x, x, rope={"rotary_dim": 6.5}),
                 lambda: attn.DecoderLayer(8, 2, rope={"rotary_dim": 2.5}, context=ctx),
                 lambda: ctx.rope_cache(8, 4.5),
                 lambda: ctx.rope_cache(8.5, 4),
                 lambda: ctx.rope_cache(8, 4, scaling="dynamic", factor=2.0,
                                        original_max_position=4.5),
                 lambda: ctx.rope_cache(8, 4, scaling="dynamic", factor=2.0,
                                        original_max_position=4, seq_len=8.5),
                 lambda: ctx.rope(x, offset=2.5),
                 lambda: ctx.softmax(x, axis=0.5),
                 lambda: ctx.log_softmax(x, axis=-1.5),
                 lambda: ctx.sinusoidal(10.5, 8),
                 lambda: ctx.sinusoidal(10, 8.5),
                 lambda: ctx.sdpa(x, x, x, window=(2.5, 0)),
                 lambda: ctx.sdpa(x, x, x, window=(None, 0.5)),
                 lambda: attn.set_num_threads(1.5)):
        with pytest.raises(ValueError, match="not an integer"):
            call()
    for bad in (float("inf"), float("nan")):
        with pytest.raises(ValueError, match="not an integer"):
            ctx.alibi_slopes(bad)
    assert cache.lengths.tolist() == [0]
    # Integral floats are taken, as elsewhere.
    np.testing.assert_array_equal(ctx.rope(x, rotary_dim=4.0), ctx.rope(x, rotary_dim=4))
    assert ctx.alibi_slopes(4.0).shape == (4,)
    ctx.close()


def test_integer_arguments_refuse_bools_and_non_numbers():
    # int() took True as 1 (Context(True) made a 1-thread context, axis=True
    # took axis 1) and raised its own TypeError for None or a tuple, naming
    # neither the call nor the argument.
    ctx = attn.Context(num_threads=1)
    x = np.ones((1, 1, 3, 8), np.float32)
    cache = attn.KVCache(1, 1, 8, capacity=4, context=ctx)
    for call, what in ((lambda: attn.Context(True), "Context: num_threads"),
                       (lambda: ctx.softmax(x, axis=True), "softmax: axis"),
                       (lambda: ctx.rope(x, offset=np.True_), "rope: offset"),
                       (lambda: ctx.sinusoidal(True, 8), "sinusoidal: length"),
                       (lambda: attn.set_num_threads(False), "set_num_threads: n")):
        with pytest.raises(TypeError, match="^%s = .* is a bool, not an integer" % what):
            call()
    for call, what in ((lambda: ctx.softmax(x, axis=None), "softmax: axis"),
                       (lambda: ctx.softmax(x, axis=(0, 1)), "softmax: axis"),
                       (lambda: ctx.sinusoidal(None, 8), "sinusoidal: length"),
                       (lambda: ctx.rope(x, offset=None), "rope: offset"),
                       (lambda: cache.truncate(None, 1), "KVCache.truncate: seq"),
                       (lambda: attn.KVCache(1, 1, [8], capacity=4, context=ctx),
                        "KVCache: head_dim"),
                       (lambda: attn.set_num_threads(None), "set_num_threads: n")):
        with pytest.raises(TypeError, match="^%s = .* is not an integer" % what):
            call()
    assert attn.get_num_threads() >= 1
    cache.close()
    ctx.close()


def test_real_arguments_refuse_strings_bools_and_complex():
    # float() took scale="2", theta="5e5" and True silently, kept the real
    # part of a NumPy complex, and its errors (None, "abc", a list) named
    # neither the call nor the argument.
    ctx = attn.Context(num_threads=1)
    x = np.ones((1, 1, 3, 8), np.float32)
    cache = attn.KVCache(1, 1, 8, capacity=4, context=ctx)
    for call, what in (
            (lambda: ctx.softmax(x, scale="2"), "softmax: scale"),
            (lambda: ctx.softmax(x, scale=True), "softmax: scale"),
            (lambda: ctx.softmax(x, scale=np.complex128(2)), "softmax: scale"),
            (lambda: ctx.sdpa(x, x, x, scale=[0.5]), "sdpa: scale"),
            (lambda: ctx.sdpa(x, x, x, softcap="5"), "sdpa: softcap"),
            (lambda: ctx.rope(x, theta="500000"), "rope: theta"),
            (lambda: ctx.sinusoidal(4, 8, base="100"), "sinusoidal: base"),
            (lambda: ctx.sinusoidal(4, 8, offset=None), "sinusoidal: offset"),
            (lambda: ctx.alibi_slopes(4, max_bias=True), "alibi_slopes: max_bias"),
            (lambda: ctx.alibi_slopes(4, max_bias="abc"), "alibi_slopes: max_bias"),
            (lambda: ctx.rope_cache(8, 4, scaling="linear", factor="2"), "rope_cache: factor"),
            (lambda: cache.append(x, x, rope={"theta": "5e5"}), "KVCache.append: rope theta"),
            (lambda: attn.DecoderLayer(8, 2, scale="1", context=ctx), "DecoderLayer: scale"),
            (lambda: attn.MultiheadAttention(8, 2, dropout="0.1", context=ctx),
             "MultiheadAttention: dropout")):
        with pytest.raises(TypeError, match="^%s = .* must be a real number" % what):
            call()
    # A float32 field: 1e300 arrived as inf (with a RuntimeWarning from the
    # rounding check) and libattn said "scale = inf".
    for call, what in ((lambda: ctx.softmax(x, scale=1e300), "softmax: scale"),
                       (lambda: ctx.sdpa(x, x, x, softcap=-1e39), "sdpa: softcap")):
        with pytest.raises(ValueError, match="^%s = .* past float32's range" % what):
            call()
    # DecoderLayer's scale follows sdpa's: 0 (and what rounds to 0) meant the default.
    for s in (0, 1e-50):
        with pytest.raises(ValueError, match="DecoderLayer: scale"):
            attn.DecoderLayer(8, 2, scale=s, context=ctx)
    assert cache.lengths.tolist() == [0]
    np.testing.assert_array_equal(ctx.softmax(x, scale=np.float64(2)), ctx.softmax(2 * x))
    torch = pytest.importorskip("torch")
    # A one-element tensor is a number, one that requires grad too.
    np.testing.assert_array_equal(
        ctx.softmax(x, scale=torch.tensor(2.0, requires_grad=True)), ctx.softmax(2 * x))
    for bad in (torch.tensor(1 + 1j), torch.ones(2)):
        with pytest.raises(TypeError, match="^softmax: scale = .* must be a real number"):
            ctx.softmax(x, scale=bad)
    cache.close()
    ctx.close()


def test_context_and_cache_arguments_are_type_checked():
    # context="ctx" raised AttributeError ('str' object has no attribute
    # '_call'), as did DecoderLayer.forward(x, None) ('_ctx').
    for call, what in ((lambda: attn.KVCache(1, 1, 8, capacity=4, context="ctx"), "KVCache"),
                       (lambda: attn.DecoderLayer(8, 2, context=1), "DecoderLayer"),
                       (lambda: attn.MultiheadAttention(8, 2, context=object()),
                        "MultiheadAttention")):
        with pytest.raises(TypeError, match="^%s: context must be an attn.Context" % what):
            call()
    with attn.Context(num_threads=1) as ctx:
        layer = attn.DecoderLayer(8, 2, context=ctx)
        x = np.ones((1, 2, 8), np.float32)
        for cache in (None, np.zeros(4)):
            with pytest.raises(TypeError, match="^DecoderLayer.forward: cache must be an "
                                                "attn.KVCache"):
                layer(x, cache)
        assert layer(x, attn.KVCache(1, 2, 4, capacity=4, context=ctx)).shape == (1, 2, 8)


def test_unconvertible_input_names_the_argument():
    # A ragged list raised numpy's "setting an array element with a
    # sequence..." naming neither the call nor the argument.
    ragged = [[1.0, 2.0], [3.0]]
    q = np.ones((1, 2, 2), np.float32)
    for call, what in ((lambda: attn.softmax(ragged), "softmax: x"),
                       (lambda: attn.softmax(q[0], mask=ragged), "softmax: mask"),
                       (lambda: attn.sdpa(q, ragged, q), "sdpa: k"),
                       (lambda: attn.sdpa(q, q, q, kv_lens=[[1], [1, 2]]), "sdpa: kv_lens"),
                       (lambda: attn.sdpa(q, q, q, sinks=[[1.0], []]), "sdpa: sinks"),
                       (lambda: attn.softmax_backward(q, ragged), "softmax_backward: dy"),
                       (lambda: attn.convert(ragged, "float16"), "convert: a"),
                       (lambda: attn.KVCache(1, 1, 2, capacity=2).append(ragged, ragged),
                        "KVCache.append: k")):
        with pytest.raises(ValueError, match="^%s cannot be made an array" % what):
            call()
