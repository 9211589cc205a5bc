"""attn.MultiheadAttention against torch.nn.MultiheadAttention (torch 1.13,
eval mode): the module's state_dict loaded as NumPy arrays, the same
forward arguments, out and weights within 1e-5."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import attn  # noqa: E402


def make_pair(E, H, seed, **kw):
    torch.manual_seed(seed)
    ref = torch.nn.MultiheadAttention(E, H, **kw).eval()
    with torch.no_grad():
        for p in ref.parameters():  # the biases start at zero: make them count
            p.uniform_(-0.5, 0.5)
    ours = attn.MultiheadAttention(E, H, **kw)
    ours.load_state_dict({k: v.numpy() for k, v in ref.state_dict().items()})
    return ref, ours


def check(ref, ours, args, kwargs):
    with torch.no_grad():
        want_out, want_w = ref(*[torch.from_numpy(a) for a in args],
                               **{k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v
                                  for k, v in kwargs.items()})
    got_out, got_w = ours(*args, **kwargs)
    np.testing.assert_allclose(got_out, want_out.numpy(), rtol=1e-5, atol=1e-5)
    if want_w is None:
        assert got_w is None
    else:
        np.testing.assert_allclose(got_w, want_w.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("average", [True, False])
def test_self_attention_with_padding(batch_first, average):
    rng = np.random.default_rng(1)
    ref, ours = make_pair(16, 4, 3, batch_first=batch_first)
    B, L = 3, 7
    x = rng.uniform(-1, 1, (B, L, 16) if batch_first else (L, B, 16)).astype(np.float32)
    pad = rng.random((B, L)) < 0.3
    pad[:, 0] = False  # torch gives NaN for a row with no key
    check(ref, ours, (x, x, x), dict(key_padding_mask=pad, need_weights=True,
                                     average_attn_weights=average))


def test_cross_attention_kdim_vdim_masks():
    rng = np.random.default_rng(2)
    ref, ours = make_pair(8, 2, 4, kdim=5, vdim=11)
    L, S, B = 4, 6, 2
    q = rng.uniform(-1, 1, (L, B, 8)).astype(np.float32)
    k = rng.uniform(-1, 1, (S, B, 5)).astype(np.float32)
    v = rng.uniform(-1, 1, (S, B, 11)).astype(np.float32)
    am = rng.uniform(-1, 1, (B * 2, L, S)).astype(np.float32)
    check(ref, ours, (q, k, v), dict(attn_mask=am, need_weights=True,
                                     average_attn_weights=False))
    bool_am = rng.random((L, S)) < 0.4
    bool_am[:, 0] = False
    check(ref, ours, (q, k, v), dict(attn_mask=bool_am, need_weights=False))


def test_unbatched_and_is_causal():
    rng = np.random.default_rng(3)
    ref, ours = make_pair(12, 3, 5, batch_first=True, bias=False)
    x = rng.uniform(-1, 1, (5, 12)).astype(np.float32)
    check(ref, ours, (x, x, x), dict(need_weights=True))
    causal = np.triu(np.ones((5, 5), bool), 1)
    with torch.no_grad():
        want, want_w = ref(*(torch.from_numpy(x),) * 3, attn_mask=torch.from_numpy(causal))
    got, got_w = ours(x, x, x, is_causal=True)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_w, want_w.numpy(), rtol=1e-5, atol=1e-5)


def test_state_dict_round_trip_and_refusals():
    ref, ours = make_pair(8, 2, 6)
    back = ours.state_dict()
    for k, v in ref.state_dict().items():
        np.testing.assert_array_equal(back[k], v.numpy())
    with pytest.raises(KeyError):
        ours.load_state_dict({"in_proj_weight": back["in_proj_weight"]})
    with pytest.raises(ValueError):
        ours.load_state_dict(dict(back, **{"out_proj.bias": np.zeros(3, np.float32)}))
    # The last weight past float32 (or not real): nothing set, the earlier
    # weights included.
    doubled = {k: v * 2 for k, v in back.items()}
    for bad, error in ((np.full(8, 1e40), ValueError), (np.zeros(8, np.complex64), TypeError)):
        with pytest.raises(error, match="out_proj.bias"):
            ours.load_state_dict(dict(doubled, **{"out_proj.bias": bad}))
        for k, v in ours.state_dict().items():
            np.testing.assert_array_equal(v, back[k])
    with pytest.raises(attn.AttnError) as e:
        attn.MultiheadAttention(8, 2, add_bias_kv=True)
    assert e.value.status == "ATTN_ERR_UNSUPPORTED"
    with pytest.raises(attn.AttnError):
        attn.MultiheadAttention(6, 4)
    x = np.zeros((2, 1, 8), np.float32)
    with pytest.raises(attn.AttnError) as e:
        ours(x, x, np.zeros((2, 1, 7), np.float32))
    assert e.value.status == "ATTN_ERR_SHAPE"


def test_query_key_value_dims_checked_first():
    # A key or value of other dims than query raised IndexError ("tuple index
    # out of range") for 0-d and 1-d ones, and for a 3-D key beside a 2-D
    # (unbatched) query libattn saw the 4-D key the binding had made of it.
    m = attn.MultiheadAttention(8, 2, batch_first=True)
    x3, x2 = np.ones((1, 3, 8), np.float32), np.ones((3, 8), np.float32)
    for q, k, v in ((x3, np.float32(1), x3), (x3, np.ones(8, np.float32), x3),
                    (x2, x3, x3), (x3, x3, x2), (x2, "a", "a")):
        with pytest.raises(ValueError, match="^MultiheadAttention: query, key and value have"):
            m(q, k, v)
    assert m(x2, x2, x2)[0].shape == (3, 8)


def test_load_state_dict_needs_a_mapping():
    # A list of pairs gave KeyError "missing keys [...], unexpected keys
    # [('in_proj_weight', ...)]"; None "'NoneType' object is not iterable".
    m = attn.MultiheadAttention(8, 2)
    for bad in (list(m.state_dict().items()), None):
        with pytest.raises(TypeError, match="^MultiheadAttention.load_state_dict: the state "
                                            "dict must be a mapping"):
            m.load_state_dict(bad)
    m.load_state_dict(m.state_dict())


def test_load_state_dict_returns_what_torch_returns():
    # strict=False returned None: torch gives the missing and unexpected keys.
    ref, ours = make_pair(8, 2, 5)
    sd = {k: v.numpy() for k, v in ref.state_dict().items() if k != "in_proj_bias"}
    sd["extra.weight"] = np.zeros(3, np.float32)
    before = ours.state_dict()["in_proj_bias"].copy()
    want = ref.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=False)
    got = ours.load_state_dict(sd, strict=False)
    assert sorted(got.missing_keys) == sorted(want.missing_keys) == ["in_proj_bias"]
    assert sorted(got.unexpected_keys) == sorted(want.unexpected_keys) == ["extra.weight"]
    np.testing.assert_array_equal(ours.state_dict()["in_proj_bias"], before)
    full = {k: v.numpy() for k, v in ref.state_dict().items()}
    assert tuple(ours.load_state_dict(full)) == ([], [])
    with pytest.raises(KeyError, match=r"missing keys \['in_proj_bias'\], unexpected keys "
                                       r"\['extra.weight'\]"):
        ours.load_state_dict(sd)


def test_constructor_refuses_zero_dims_and_bad_dropout():
    # kdim=0 made a layer libattn built with kdim = embed_dim (0 = default)
    # while the binding expected k_proj_weight [8, 0]: state_dict() then
    # failed in libattn. dropout=-1 or 2 was taken (torch refuses them).
    for kw, what in ((dict(kdim=0), "kdim = 0 is not allowed"),
                     (dict(vdim=0), "vdim = 0 is not allowed"),
                     (dict(dropout=-1.0), r"dropout = -1.0 but must be in \[0, 1\]"),
                     (dict(dropout=2), r"dropout = 2 but must be in \[0, 1\]")):
        with pytest.raises(ValueError, match="^MultiheadAttention: " + what):
            attn.MultiheadAttention(8, 2, **kw)
    m = attn.MultiheadAttention(8, 2, dropout=0.1, kdim=4)
    assert m.state_dict()["k_proj_weight"].shape == (8, 4)


def test_device_may_be_a_torch_cpu_device():
    # device=torch.device("cpu") was refused: "device = device(type='cpu')
    # but libattn runs on the CPU".
    for dev in (torch.device("cpu"), "cpu:0", torch.device("cpu", 0)):
        attn.MultiheadAttention(8, 2, device=dev)
    for dev in (torch.device("meta"), "cuda"):
        with pytest.raises(ValueError, match="^MultiheadAttention: device = .* but libattn runs "
                                             "on the CPU"):
            attn.MultiheadAttention(8, 2, device=dev)


def test_unbatched_key_padding_mask_is_1d():
    # A [1, S] mask beside an unbatched query got a batch axis added and
    # libattn said "key_padding_mask has 3 dims but must have 2".
    m = attn.MultiheadAttention(8, 2)
    x = np.ones((3, 8), np.float32)
    with pytest.raises(ValueError, match="^MultiheadAttention: key_padding_mask has 2 dims but "
                                         "an unbatched query takes a 1-D one"):
        m(x, x, x, key_padding_mask=np.zeros((1, 3), bool))
    out, w = m(x, x, x, key_padding_mask=np.array([False, False, True]))
    assert out.shape == (3, 8) and not w[:, 2].any()
