"""Checkpoints (the digan/checkpoint package): our safetensors format, official network pickles read without
executing anything, torch state dicts, config inference and the errors for broken files."""
import builtins
import collections
import dataclasses
import io
import json
import os
import pickle
import subprocess
import sys
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

from digan import checkpoint as ck
from digan.checkpoint import CheckpointError, UnsafeCheckpointError
from digan.config import discriminator_preset, generator_preset
from digan.networks import Discriminator, Generator
from tests import official_pickle as op
from tests.conftest import fixture_path
from tests.data_utils import walk_records

# tiny-32 plus one extra conv at 32, so that extra_convs (an nn.ModuleList) is exercised too.
TINY_G = dataclasses.replace(generator_preset("tiny-32"), num_extra_convs={32: 1})
TINY_D = discriminator_preset("tiny-32")


def _perturbed(cls, cfg, seed):
    """A network whose every tensor (biases, w_avg and filters included) differs from its init."""
    torch.manual_seed(seed)
    m = cls(cfg).eval()
    with torch.no_grad():
        for t in m.state_dict().values():
            t.add_(0.1 * torch.randn_like(t))
    return m


@pytest.fixture(scope="module")
def nets():
    return dict(G=_perturbed(Generator, TINY_G, 0), G_ema=_perturbed(Generator, TINY_G, 1),
                D=_perturbed(Discriminator, TINY_D, 2))


@pytest.fixture(scope="module")
def official_pkl(tmp_path_factory, nets):
    """(path, marker) of an official-format pickle with G, D, G_ema; module_src would create marker."""
    d = tmp_path_factory.mktemp("official")
    marker = d / "module_src_ran"
    path = op.write_network_pickle(d / "network-snapshot-000100.pkl", G=nets["G"], D=nets["D"],
                                   G_ema=nets["G_ema"], marker=marker)
    return path, marker


def assert_same_tensors(a, b):
    sa = a.state_dict() if isinstance(a, torch.nn.Module) else a
    sb = b.state_dict() if isinstance(b, torch.nn.Module) else b
    assert list(sa) == list(sb) or sorted(sa) == sorted(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


def assert_same_architecture(a, b):
    """Equal configs up to num_extra_convs entries above img_resolution (which change nothing; without
    stored values the inferred config keeps the released defaults there)."""
    assert dataclasses.replace(a, num_extra_convs={}) == dataclasses.replace(b, num_extra_convs={})
    assert all(a.extra_convs(r) == b.extra_convs(r) for r in a.block_resolutions)


@torch.no_grad()
def render(G, psi=0.7):
    """Two videos x three frames (one off-grid time, one extrapolated), truncation on."""
    g = torch.Generator().manual_seed(1)
    z, z_motion = torch.randn(2, G.z_dim, generator=g), torch.randn(2, G.w_dim, generator=g)
    ws = G.mapping(z, None, truncation_psi=psi)
    return G.synthesis(ws, torch.tensor([0.0, 0.37, 1.5]).repeat(2), z_motion)


def no_warnings():
    ctx = warnings.catch_warnings()
    ctx.__enter__()
    warnings.simplefilter("error")
    return ctx


# ---- our format ----------------------------------------------------------------------------

def test_generator_round_trip(tmp_path, nets):
    path = ck.save_generator(nets["G"], tmp_path / "g.safetensors")
    meta = ck.read_metadata(path)
    assert meta["format"] == "digan-engine" and meta["format_version"] == "1" and meta["kind"] == "generator"
    assert json.loads(meta["config"]) == TINY_G.to_dict()
    assert set(load_file(str(path))) == set(nets["G"].state_dict())  # official keys, unprefixed
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        G = ck.load_generator(path)
    assert G.cfg == TINY_G and not G.training
    assert_same_tensors(G, nets["G"])
    assert torch.equal(render(G), render(nets["G"]))


def test_discriminator_round_trip(tmp_path, nets):
    path = ck.save_discriminator(nets["D"], tmp_path / "d.safetensors")
    assert ck.read_metadata(path)["kind"] == "discriminator"
    D = ck.load_discriminator(path)
    assert D.cfg == TINY_D and not D.training
    assert_same_tensors(D, nets["D"])
    with pytest.raises(CheckpointError, match="no generator"):
        ck.load_generator(path)


def test_training_round_trip(tmp_path, nets):
    opt = {"opt.G.0.exp_avg": torch.arange(5.0), "opt.step": torch.tensor(7)}
    path = ck.save_training(tmp_path / "t.safetensors", G=nets["G"], D=nets["D"], G_ema=nets["G_ema"],
                            extra_tensors=opt, extra_metadata={"kimg": "12.5"})
    meta = ck.read_metadata(path)
    assert meta["kind"] == "training" and meta["kimg"] == "12.5" and "config" not in meta
    assert json.loads(meta["g_config"]) == TINY_G.to_dict() and json.loads(meta["d_config"]) == TINY_D.to_dict()
    keys = set(load_file(str(path)))
    assert {k.split(".")[0] for k in keys} == {"G", "D", "G_ema", "opt"}
    assert_same_tensors(ck.load_generator(path), nets["G_ema"])            # G_ema by default
    assert_same_tensors(ck.load_generator(path, which="G"), nets["G"])
    assert_same_tensors(ck.load_discriminator(path), nets["D"])
    t = ck.load_training(path)
    assert_same_tensors(t.G, nets["G"])
    assert_same_tensors(t.G_ema, nets["G_ema"])
    assert_same_tensors(t.D, nets["D"])
    assert_same_tensors(t.extra_tensors, opt)
    assert t.metadata["kimg"] == "12.5"
    with pytest.raises(ValueError, match="which"):
        ck.load_generator(path, which="D")


def test_training_without_g_ema_falls_back_to_g(tmp_path, nets):
    path = ck.save_training(tmp_path / "t.safetensors", G=nets["G"], D=nets["D"])
    with pytest.warns(UserWarning, match="no G_ema"):
        G = ck.load_generator(path)
    assert_same_tensors(G, nets["G"])
    with pytest.raises(CheckpointError, match="no generator"):
        ck.load_generator(ck.save_training(tmp_path / "d_only.safetensors", D=nets["D"]))


def test_save_refuses_bad_arguments(tmp_path, nets):
    with pytest.raises(ValueError, match="must not start with"):
        ck.save_training(tmp_path / "x.safetensors", G=nets["G"], extra_tensors={"G.sneaky": torch.zeros(1)})
    with pytest.raises(ValueError, match="reserved"):
        ck.save_training(tmp_path / "x.safetensors", G=nets["G"], extra_metadata={"kind": "generator"})
    with pytest.raises(ValueError, match="different configs"):
        ck.save_training(tmp_path / "x.safetensors", G=nets["G"], G_ema=Generator(generator_preset("tiny-64")))
    with pytest.raises(TypeError, match="cfg"):
        ck.save_generator(torch.nn.Linear(2, 2), tmp_path / "x.safetensors")
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_loading_leaves_the_global_rng_alone(tmp_path, nets):
    path = ck.save_generator(nets["G"], tmp_path / "g.safetensors")
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    ck.load_generator(path)
    assert torch.equal(torch.rand(4), expected)


# ---- official pickles ----------------------------------------------------------------------

@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_official_pickle_loads_exactly(tmp_path, nets, protocol):
    marker = tmp_path / "module_src_ran"
    path = op.write_network_pickle(tmp_path / "net.pkl", G=nets["G"], D=nets["D"], G_ema=nets["G_ema"],
                                   marker=marker, protocol=protocol)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every value comes from the pickle: nothing defaulted
        G_ema, G, D = ck.load_generator(path), ck.load_generator(path, which="G"), ck.load_discriminator(path)
    assert G_ema.cfg == TINY_G and G.cfg == TINY_G and D.cfg == TINY_D
    assert_same_tensors(G_ema, nets["G_ema"])
    assert_same_tensors(G, nets["G"])
    assert_same_tensors(D, nets["D"])
    assert not marker.exists()


def test_read_official_pickle_gives_inert_data(official_pkl, nets):
    path, marker = official_pkl
    data = ck.read_official_pickle(path)
    assert set(data) == {"G", "D", "G_ema", "augment_pipe", "training_set_kwargs"}
    G = data["G_ema"]
    assert isinstance(G, ck.OfficialNetwork) and G.class_name == "Generator"
    assert data["D"].class_name == "OurDiscriminator"
    assert_same_tensors(G.state_dict, nets["G_ema"].state_dict())
    assert_same_tensors(data["D"].state_dict, nets["D"].state_dict())
    # init kwargs as plain data: EasyDicts became dicts, numbers are Python numbers
    kw = G.init_kwargs
    assert type(kw["mapping_kwargs"]) is dict and kw["mapping_kwargs"]["num_layers"] == 2
    assert kw["synthesis_kwargs"]["channel_base"] == TINY_G.channel_base
    assert kw["cfg"]["coords"]["motion_sigma"] == 0.25 and kw["cfg"]["input"]["coord_fuser_cfg"] == "${coords}"
    # module attributes: numpy scalars -> floats, omegaconf DictConfig -> dict, Beta stays an inert record
    attrs = G.attrs("synthesis.b4.input.input.coord_fuser")
    assert type(attrs["fourier_scale"]) is float and attrs["use_cosine"] is True
    assert attrs["cfg"]["low_res_cfg"]["predictable_emb_size"] == TINY_G.emb_size
    assert not isinstance(attrs["dist1"], torch.distributions.Distribution)
    assert type(data["training_set_kwargs"]["max_size"]) is int
    assert data["augment_pipe"] is None
    # module_src is kept as text, never run, and nothing official got imported
    rec = dict(G.modules())["synthesis.b8.conv0"]
    assert str(marker) in rec.module_src
    assert not marker.exists()
    assert not [m for m in sys.modules if m.split(".")[0] in ("torch_utils", "dnnlib", "omegaconf")]


def test_official_fixture_weights_through_a_pickle_are_bit_identical(tmp_path, official_g):
    """The small-64 fixture (official weights) written as an official pickle loads bit-identically."""
    G_ref, fx = official_g
    marker = tmp_path / "ran"
    path = op.write_network_pickle(tmp_path / "small.pkl", G=G_ref, G_ema=G_ref, marker=marker)
    G = ck.load_generator(path)
    assert G.cfg == generator_preset("small-64")
    for k, v in G.state_dict().items():
        assert torch.equal(v, fx["G." + k]), k
    with torch.no_grad():
        ws = G.mapping(fx["in.z"][:1], None)
        a = G.synthesis(ws, fx["in.Ts"][:2], fx["in.z_motion"][:1])
        b = G_ref.synthesis(G_ref.mapping(fx["in.z"][:1], None), fx["in.Ts"][:2], fx["in.z_motion"][:1])
    assert torch.equal(a, b)
    assert not marker.exists()


def test_pickle_without_stored_values_uses_defaults_with_a_warning(tmp_path, nets):
    path = op.write_network_pickle(tmp_path / "bare.pkl", G_ema=nets["G_ema"], marker=tmp_path / "m",
                                   attrs=False, kwargs=False)
    with pytest.warns(UserWarning, match=r"w_avg_beta, motion_sigma, fourier_scale, conv_clamp") as rec:
        G = ck.load_generator(path)
    assert "released defaults" in str(rec[0].message) and str(path) in str(rec[0].message)
    assert_same_architecture(G.cfg, TINY_G)  # tiny-32 uses the released defaults for those
    assert_same_tensors(G, nets["G_ema"])


def test_stored_values_are_used_and_checked(tmp_path, nets):
    rec = op.generator_record(nets["G_ema"], tmp_path / "m")
    kw = rec.state["_init_kwargs"]
    kw["synthesis_kwargs"]["conv_clamp"] = None      # as DIGAN's fp32 configs store it
    for _, state in walk_records(rec):
        if "motion_sigma" in state:
            state["motion_sigma"] = 0.5                  # module attributes win over kwargs
        if "conv_clamp" in state:
            state["conv_clamp"] = None
    (tmp_path / "a.pkl").write_bytes(op.dump({"G_ema": rec}))
    G = ck.load_generator(tmp_path / "a.pkl")
    assert G.cfg.motion_sigma == 0.5 and G.cfg.conv_clamp is None

    kw["z_dim"] = 99
    (tmp_path / "b.pkl").write_bytes(op.dump({"G_ema": rec}))
    with pytest.raises(CheckpointError, match=r"b\.pkl.*z_dim.*99"):
        ck.load_generator(tmp_path / "b.pkl")
    kw["z_dim"] = TINY_G.z_dim
    kw["cfg"]["upsampling_mode"] = "bilinear"
    (tmp_path / "c.pkl").write_bytes(op.dump({"G_ema": rec}))
    with pytest.raises(CheckpointError, match="upsampling_mode='bilinear'"):
        ck.load_generator(tmp_path / "c.pkl")
    kw["cfg"]["upsampling_mode"] = "nearest"
    kw["synthesis_kwargs"]["channel_base"] = 512
    (tmp_path / "d.pkl").write_bytes(op.dump({"G_ema": rec}))
    with pytest.raises(CheckpointError, match="channel_base=512"):
        ck.load_generator(tmp_path / "d.pkl")


# ---- pickles that try to run code ----------------------------------------------------------

def _raw_os_system(cmd):
    return b"cos\nsystem\n(V" + cmd.encode() + b"\ntR."


def _raw_getattr_import(cmd):  # getattr(__import__('os'), 'system')(cmd)
    return (b"cbuiltins\ngetattr\n(cbuiltins\n__import__\n(Vos\ntRVsystem\ntR(V" + cmd.encode() + b"\ntR.")


def _in_network(gadget, marker):
    """A legitimate network pickle with the gadget deep inside a module's init kwargs."""
    G = Generator(generator_preset("tiny-32"))
    rec = op.generator_record(G, marker)
    rec.state["_init_kwargs"]["synthesis_kwargs"]["evil"] = gadget
    return op.dump({"G": rec, "G_ema": rec})


def _inner_storage(gadget):
    """A 'tensor storage' whose torch.save bytes hold the gadget (torch's own pickler writes it)."""
    buf = io.BytesIO()
    torch.save(gadget, buf, _use_new_zipfile_serialization=False)
    return op.Gadget(torch.storage._load_from_bytes, buf.getvalue())


GADGETS = {
    "os.system": (lambda cmd, m: _raw_os_system(cmd), "os.system"),
    "getattr+__import__": (lambda cmd, m: _raw_getattr_import(cmd), "builtins.getattr"),
    "posix.system": (lambda cmd, m: _in_network(op.Gadget(os.system, cmd), m), "posix.system"),
    "builtins.eval": (lambda cmd, m: _in_network(op.Gadget(builtins.eval, f"__import__('os').system({cmd!r})"), m),
                      "builtins.eval"),
    "builtins.exec": (lambda cmd, m: op.dump({"G": op.Gadget(builtins.exec, f"import os; os.system({cmd!r})")}),
                      "builtins.exec"),
    "subprocess.Popen": (lambda cmd, m: _in_network(op.Gadget(subprocess.Popen, cmd.split()), m), "subprocess.Popen"),
    "real nn.Module class": (lambda cmd, m: op.dump({"G": torch.nn.Linear(2, 2)}), "torch.nn.modules.linear.Linear"),
    "inside a storage": (lambda cmd, m: _in_network(_inner_storage(op.Gadget(os.system, cmd)), m), "posix.system"),
}


@pytest.mark.parametrize("name", sorted(GADGETS))
def test_code_running_pickles_are_refused_and_never_run(tmp_path, name):
    payload = tmp_path / "payload_ran"
    build, forbidden = GADGETS[name]
    path = tmp_path / "evil.pkl"
    path.write_bytes(build(f"touch {payload}", tmp_path / "module_src_ran"))
    for load in (ck.load_generator, ck.read_official_pickle, lambda p: ck.convert(p, tmp_path / "out.safetensors")):
        with pytest.raises(UnsafeCheckpointError) as e:
            load(path)
        assert str(path) in str(e.value) and forbidden in str(e.value)
    assert isinstance(e.value, CheckpointError) and isinstance(e.value, ValueError)
    assert not payload.exists() and not (tmp_path / "module_src_ran").exists()
    assert not (tmp_path / "out.safetensors").exists()


def test_tensor_hooks_are_refused(tmp_path):
    t = torch.arange(3.0)
    storage = t.__reduce_ex__(2)[1][0]
    hooked = op.Gadget(torch._utils._rebuild_tensor_v2, storage, 0, (3,), (1,), False,
                       collections.OrderedDict(h=collections.OrderedDict))
    (tmp_path / "h.pkl").write_bytes(op.dump({"G": {"w": hooked}}))
    with pytest.raises(UnsafeCheckpointError, match="hooks"):
        ck.read_official_pickle(tmp_path / "h.pkl")


def test_torch_save_with_code_is_refused(tmp_path):
    payload = tmp_path / "payload_ran"
    torch.save({"G.mapping.fc0.weight": op.Gadget(os.system, f"touch {payload}")}, tmp_path / "evil.pt")
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.pt.*posix\.system"):
        ck.load_generator(tmp_path / "evil.pt")
    assert not payload.exists()


# ---- torch state dicts and foreign safetensors -------------------------------------------------

def test_torch_state_dicts(tmp_path, nets):
    torch.save(nets["G"].state_dict(), tmp_path / "g.pt")
    with pytest.warns(UserWarning, match="motion_sigma"):
        G = ck.load_generator(tmp_path / "g.pt")
    assert_same_architecture(G.cfg, TINY_G)
    assert_same_tensors(G, nets["G"])

    both = {**{f"G_ema.{k}": v for k, v in nets["G_ema"].state_dict().items()},
            **{f"D.{k}": v for k, v in nets["D"].state_dict().items()}}
    torch.save(both, tmp_path / "both.pt")
    with pytest.warns(UserWarning, match="mbstd_group_size"):
        assert_same_tensors(ck.load_discriminator(tmp_path / "both.pt"), nets["D"])
    with pytest.warns(UserWarning):
        assert_same_tensors(ck.load_generator(tmp_path / "both.pt"), nets["G_ema"])

    torch.save({"G_ema": nets["G_ema"].state_dict(), "step": 5}, tmp_path / "nested.pt")
    with pytest.warns(UserWarning):
        assert_same_tensors(ck.load_generator(tmp_path / "nested.pt"), nets["G_ema"])

    (tmp_path / "plain.pkl").write_bytes(pickle.dumps(nets["G"].state_dict()))  # a pickled state dict
    with pytest.warns(UserWarning):
        assert_same_tensors(ck.load_generator(tmp_path / "plain.pkl"), nets["G"])


def test_fixture_safetensors_load_as_state_dicts(official_g, official_d):
    with pytest.warns(UserWarning, match="defaults"):
        G = ck.load_generator(fixture_path("official_digan_64_small.safetensors"), which="G")
    assert G.cfg == generator_preset("small-64")
    assert_same_tensors(G, official_g[0])
    with pytest.warns(UserWarning, match="defaults"):
        D = ck.load_discriminator(fixture_path("official_digan_D_64_small.safetensors"))
    assert D.cfg == discriminator_preset("small-64")
    assert_same_tensors(D, official_d[0])


# ---- convert ---------------------------------------------------------------------------

def test_convert_pickle_then_load_is_bit_identical(tmp_path, official_pkl, nets):
    path, marker = official_pkl
    out = tmp_path / "converted.safetensors"
    assert ck.convert(path, out) == out
    assert ck.read_metadata(out)["kind"] == "training"
    from_pkl, from_st = ck.load_generator(path), ck.load_generator(out)
    assert from_st.cfg == from_pkl.cfg == TINY_G
    assert_same_tensors(from_st, nets["G_ema"])
    assert torch.equal(render(from_st), render(from_pkl))
    assert torch.equal(render(from_st, psi=1.0), render(nets["G_ema"], psi=1.0))
    assert_same_tensors(ck.load_discriminator(out), nets["D"])
    assert_same_tensors(ck.load_generator(out, which="G"), nets["G"])
    assert not marker.exists()


def test_convert_single_networks(tmp_path, nets):
    torch.save(nets["G"].state_dict(), tmp_path / "g.pt")
    with pytest.warns(UserWarning):
        ck.convert(tmp_path / "g.pt", tmp_path / "g.safetensors")
    assert ck.read_metadata(tmp_path / "g.safetensors")["kind"] == "generator"
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # the config is stored now
        assert_same_tensors(ck.load_generator(tmp_path / "g.safetensors"), nets["G"])
    torch.save({f"D.{k}": v for k, v in nets["D"].state_dict().items()}, tmp_path / "d.pt")
    with pytest.warns(UserWarning):
        ck.convert(tmp_path / "d.pt", tmp_path / "d.safetensors")
    assert ck.read_metadata(tmp_path / "d.safetensors")["kind"] == "discriminator"
    assert_same_tensors(ck.load_discriminator(tmp_path / "d.safetensors"), nets["D"])


# ---- broken files -------------------------------------------------------------------------

def test_truncated_pickle_names_the_tensor(tmp_path, official_pkl, nets):
    path, _ = official_pkl
    data = path.read_bytes()
    weight = nets["G_ema"].state_dict()["synthesis.b16.conv0.affine.weight"]
    at = data.find(weight.numpy().tobytes())
    assert at > 0 and data.find(weight.numpy().tobytes(), at + 1) < 0
    cut = tmp_path / "cut.pkl"
    cut.write_bytes(data[:at + weight.numel() * 2])
    with pytest.raises(CheckpointError, match=r"cut\.pkl: truncated .*'G_ema\.synthesis\.b16\.conv0\.affine\.weight'"):
        ck.load_generator(cut)
    for n in (1, 10, len(data) // 3, len(data) - 1):
        cut.write_bytes(data[:n])
        with pytest.raises(CheckpointError, match=r"cut\.pkl: truncated"):
            ck.read_official_pickle(cut)


def test_truncated_safetensors_names_the_tensor(tmp_path, nets):
    path = ck.save_generator(nets["G"], tmp_path / "g.safetensors")
    data = path.read_bytes()
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    header.pop("__metadata__")
    last = max(header, key=lambda k: header[k]["data_offsets"][1])
    (tmp_path / "cut.safetensors").write_bytes(data[:-100])
    with pytest.raises(CheckpointError, match=rf"cut\.safetensors: truncated .*{last!r}"):
        ck.load_generator(tmp_path / "cut.safetensors")
    (tmp_path / "cut.safetensors").write_bytes(data[:40])
    with pytest.raises(CheckpointError, match=r"cut\.safetensors: truncated safetensors file"):
        ck.load_generator(tmp_path / "cut.safetensors")


def _rewrite(src, dst, edit):
    """Copy our safetensors file with its tensors edited (metadata kept)."""
    tensors = load_file(str(src))
    edit(tensors)
    save_file(tensors, str(dst), metadata=ck.read_metadata(src))
    return dst


def test_wrong_missing_and_unexpected_tensors_are_named(tmp_path, nets):
    g = ck.save_generator(nets["G"], tmp_path / "g.safetensors")
    key = "synthesis.b8.conv0.weight"
    bad = _rewrite(g, tmp_path / "shape.safetensors", lambda t: t.update({key: t[key][:-1]}))
    msg = rf"shape\.safetensors: tensor '{key}' has shape \(31, 32, 1, 1\).*\(32, 32, 1, 1\)"
    with pytest.raises(CheckpointError, match=msg):
        ck.load_generator(bad)
    bad = _rewrite(g, tmp_path / "missing.safetensors", lambda t: t.pop("mapping.w_avg"))
    with pytest.raises(CheckpointError, match=r"missing\.safetensors: .*missing tensors 'mapping\.w_avg'"):
        ck.load_generator(bad)
    bad = _rewrite(g, tmp_path / "extra.safetensors",
                   lambda t: t.update({"synthesis.b8.noise_const": torch.zeros(8, 8)}))
    with pytest.raises(CheckpointError, match=r"extra\.safetensors: .*unexpected tensors 'synthesis\.b8\.noise_const'"):
        ck.load_generator(bad)
    t = ck.save_training(tmp_path / "t.safetensors", G_ema=nets["G_ema"], D=nets["D"])
    bad = _rewrite(t, tmp_path / "t_shape.safetensors", lambda d: d.update({"D.imageD.b4.fc.bias": torch.zeros(3)}))
    with pytest.raises(CheckpointError, match=r"tensor 'D\.imageD\.b4\.fc\.bias' has shape \(3,\)"):
        ck.load_discriminator(bad)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_are_named(tmp_path, nets, value):
    t = ck.save_training(tmp_path / "t.safetensors", G_ema=nets["G_ema"], D=nets["D"])

    def poison(key):
        def edit(d):
            d[key] = d[key].clone()
            d[key].view(-1)[3] = value
        return edit

    bad = _rewrite(t, tmp_path / "bad.safetensors", poison("G_ema.mapping.fc0.weight"))
    with pytest.raises(CheckpointError, match=r"bad\.safetensors: tensor 'G_ema\.mapping\.fc0\.weight' has non-finite"):
        ck.load_generator(bad)
    bad = _rewrite(t, tmp_path / "bad_d.safetensors", poison("D.videoD.b32.fromrgb.weight"))
    with pytest.raises(CheckpointError, match=r"tensor 'D\.videoD\.b32\.fromrgb\.weight' has non-finite"):
        ck.load_discriminator(bad)
    G = Generator(TINY_G)
    with torch.no_grad():
        G.synthesis.b16.torgb.bias[1] = value
    path = op.write_network_pickle(tmp_path / "bad.pkl", G_ema=G, marker=tmp_path / "m")
    with pytest.raises(CheckpointError, match=r"bad\.pkl: tensor 'G_ema\.synthesis\.b16\.torgb\.bias' has non-finite"):
        ck.load_generator(path)


def test_unknown_missing_and_malformed_files(tmp_path, nets):
    with pytest.raises(FileNotFoundError, match="nope.pkl"):
        ck.load_generator(tmp_path / "nope.pkl")
    (tmp_path / "empty.pkl").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.pkl: the file is empty"):
        ck.load_generator(tmp_path / "empty.pkl")
    (tmp_path / "notes.txt").write_text("hello, this is not a checkpoint\n")
    with pytest.raises(CheckpointError, match=r"notes\.txt: unknown checkpoint format"):
        ck.load_generator(tmp_path / "notes.txt")
    with pytest.raises(CheckpointError, match="directory"):
        ck.load_generator(tmp_path)
    (tmp_path / "list.pkl").write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(CheckpointError, match=r"list\.pkl: the pickle holds a list"):
        ck.load_generator(tmp_path / "list.pkl")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match=r"list\.pt: .*not a state dict"):
        ck.load_generator(tmp_path / "list.pt")
    (tmp_path / "zip.pt").write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    with pytest.raises(CheckpointError, match=r"zip\.pt: corrupt or truncated torch.save"):
        ck.load_generator(tmp_path / "zip.pt")

    g = ck.save_generator(nets["G"], tmp_path / "g.safetensors")
    tensors = load_file(str(g))
    for meta, msg in (({"format_version": "2"}, "format_version '2' is not supported"),
                      ({"kind": "optimizer"}, "unknown checkpoint kind 'optimizer'"),
                      ({"config": "{not json"}, "'config' is not a valid GeneratorConfig"),
                      ({"config": json.dumps({**TINY_G.to_dict(), "colour": 1})}, "colour")):
        save_file(tensors, str(tmp_path / "m.safetensors"), metadata={**ck.read_metadata(g), **meta})
        with pytest.raises(CheckpointError, match=msg):
            ck.load_generator(tmp_path / "m.safetensors")


# ---- config inference -----------------------------------------------------------------------

def _sd(cfg_or_module):
    m = cfg_or_module if isinstance(cfg_or_module, torch.nn.Module) else Generator(cfg_or_module)
    return dict(m.state_dict())


@pytest.mark.parametrize("name", ["digan-128", "digan-128-ucf101"])
def test_inference_recovers_released_configs(name):
    with torch.device("meta"):  # shapes only, no memory
        G, D = Generator(generator_preset(name)), Discriminator(discriminator_preset(name))
    with pytest.warns(UserWarning):
        assert ck.infer_generator_config(G.state_dict()) == generator_preset(name)
    with pytest.warns(UserWarning):
        assert ck.infer_discriminator_config(D.state_dict()) == discriminator_preset(name)


def test_inference_of_conditional_and_unusual_configs():
    cfg = dataclasses.replace(TINY_G, c_dim=5, mapping_layers=3, z_dim=24, rank=3, emb_size=8, input_resolution=16,
                              num_extra_convs={16: 2, 32: 1})
    with pytest.warns(UserWarning):
        assert_same_architecture(ck.infer_generator_config(_sd(cfg)), cfg)
    dcfg = dataclasses.replace(TINY_D, c_dim=5, cmap_dim=12, mapping_layers=2, mbstd_num_channels=2)
    with pytest.warns(UserWarning):
        assert ck.infer_discriminator_config(dict(Discriminator(dcfg).state_dict())) == dcfg


@pytest.mark.parametrize("edit, param", [
    (lambda sd: sd.update({"synthesis.b8.conv1.weight": torch.zeros(40, 32, 1, 1)}), "channel_base/channel_max"),
    (lambda sd: sd.update({"synthesis.b4.conv1.affine.weight": torch.zeros(193, 32)}), "rank"),
    (lambda sd: sd.update({"synthesis.b16.conv0.affine.weight": torch.zeros(48 * 3 + 48, 32)}), "rank"),
    (lambda sd: sd.update({"synthesis.b4.input.input.coord_fuser.xyaffine.weight": torch.zeros(47, 32)}), "emb_size"),
    (lambda sd: [sd.pop(k) for k in list(sd) if k.startswith("synthesis.b16.")], "img_resolution"),
    (lambda sd: [sd.pop(k) for k in list(sd) if k.startswith("mapping.fc0.")], "mapping_layers"),
    (lambda sd: [sd.pop(k) for k in list(sd) if k.startswith("synthesis.b32.coord_fuser.")], "input_resolution"),
    (lambda sd: sd.update({"mapping.fc0.weight": torch.zeros(32, 0)}), "z_dim"),
    (lambda sd: sd.pop("synthesis.b4.torgb.weight"), "img_channels"),
])
def test_generator_inference_refusals_name_the_hyper_parameter(edit, param):
    sd = _sd(TINY_G)
    edit(sd)
    with pytest.raises(CheckpointError, match=rf"my\.pt: cannot infer {param}"):
        ck.infer_generator_config(sd, source="my.pt")


@pytest.mark.parametrize("edit, param", [
    (lambda sd: [sd.pop(k) for k in list(sd) if k.endswith("skip.weight")], "architecture"),
    (lambda sd: sd.update({"videoD.b32.fromrgb.weight": torch.zeros(8, 6, 1, 1)}), "img_channels"),
    (lambda sd: sd.update({"videoD.b16.conv0.weight": torch.zeros(64, 64, 3, 3)}), "channel_base/channel_max"),
    (lambda sd: [sd.pop(k) for k in list(sd) if k.startswith("imageD.")], "img_resolution"),
    (lambda sd: sd.update({"videoD.b4.conv.weight": torch.zeros(32, 16, 3, 3)}), "mbstd_num_channels"),
])
def test_discriminator_inference_refusals_name_the_hyper_parameter(edit, param):
    sd = dict(Discriminator(TINY_D).state_dict())
    edit(sd)
    with pytest.raises(CheckpointError, match=rf"d\.pt: cannot infer {param}"):
        ck.infer_discriminator_config(sd, source="d.pt")


def test_inference_checks_stored_values_against_shapes():
    with pytest.raises(CheckpointError, match="cannot infer rank: .*stored rank=10"):
        ck.infer_generator_config(_sd(TINY_G), {"rank": 10}, source="x.pkl")
    with pytest.raises(CheckpointError, match="cannot infer channel_base/channel_max"):
        ck.infer_generator_config(_sd(TINY_G), {"channel_base": 256, "channel_max": 16}, source="x.pkl")
    with pytest.raises(CheckpointError, match="cannot infer c_dim"):
        ck.infer_discriminator_config(dict(Discriminator(TINY_D).state_dict()), {"c_dim": 101}, source="x.pkl")


def test_safetensors_whose_header_length_starts_with_0x80(tmp_path):
    """A header of 0x..80 bytes makes the file's first byte 0x80, like a pickle's: still safetensors."""
    from safetensors.torch import save_file

    from digan.checkpoint import load_generator, save_generator
    from digan.config import generator_preset
    from digan.networks import Generator
    torch.manual_seed(0)
    G = Generator(generator_preset("tiny-32"))
    path = tmp_path / "g.safetensors"
    save_generator(G, path)
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    for pad in range(0, 256):  # grow a metadata field until the header length's low byte is 0x80
        save_file(tensors, str(path), metadata={**meta, "note": "x" * pad})
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[0] == 0x80
    G2 = load_generator(path)
    assert all(torch.equal(a, b) for a, b in zip(G.state_dict().values(), G2.state_dict().values()))
