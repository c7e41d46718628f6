"""Checkpoints (a package): our safetensors format, official DIGAN network pickles read safely, torch state dicts.

Our format is a safetensors file whose tensors carry the official state-dict key names and whose
metadata holds the JSON config, so loading never executes anything:

    format = "digan-engine", format_version = "1"
    kind   = "generator"      config = GeneratorConfig JSON, tensors unprefixed (official keys)
           | "discriminator"  config = DiscriminatorConfig JSON, tensors unprefixed
           | "training"       g_config, d_config; tensors prefixed "G.", "D.", "G_ema." (any other
                              prefix, e.g. "opt.", is carried along and ignored by the loaders)

`load_generator` / `load_discriminator` also accept

- an official network pickle (StyleGAN2-ADA `persistence` format, a dict with 'G', 'D', 'G_ema', ...).
  It is read by a restricted unpickler with an explicit allow-list of inert globals: each persistent
  module becomes a plain record (class name + pickled state); its embedded `module_src` is never
  executed or imported; tensors are rebuilt from storages that are opened with
  `torch.load(weights_only=True)`. Every other global is refused with `UnsafeCheckpointError`.
- a `torch.save` state dict (read with `torch.load(weights_only=True)`), keys possibly prefixed
  with "G.", "G_ema.", "D.".
- any other safetensors file holding official keys (e.g. ../shared/fixtures), like a state dict.

Hyper-parameters that a pickle or state dict does not store are inferred from tensor shapes
(`infer_generator_config`, `infer_discriminator_config`); those that shapes cannot give come from
the pickle's module attributes or init kwargs, else from the released defaults with a warning.
Loading always builds the network from its config and uses `load_state_dict(strict=True)`.
All problems raise `CheckpointError` (a ValueError) naming the file and, where there is one, the
tensor or hyper-parameter.

Layout: `_common` (format constants, errors), `standins` (inert stand-ins, the unpickle size budget),
`allowed` (the functions a pickle may call), `unpickler` (allow-list, restricted unpickler), `official`
(records -> plain data, hints from pickled kwargs), `inference` (configs from shapes), `formats`
(sniffing, safetensors/torch readers), `loading` (checks and loaders), `saving` (writers, convert),
`training_state` (the optimizer, RNG and step state of `digan train` snapshots).
"""
from ._common import FORMAT, FORMAT_VERSION, KINDS, NETWORK_PREFIXES, CheckpointError, PathLike, UnsafeCheckpointError
from .formats import read_metadata
from .inference import infer_discriminator_config, infer_generator_config
from .loading import TrainingCheckpoint, load_discriminator, load_generator, load_training, numel_bound
from .official import OfficialNetwork, read_official_pickle, to_plain
from .saving import convert, save_discriminator, save_generator, save_training
from .standins import PersistentRecord

__all__ = [
    "CheckpointError", "UnsafeCheckpointError", "OfficialNetwork", "TrainingCheckpoint",
    "FORMAT", "FORMAT_VERSION", "save_generator", "save_discriminator", "save_training",
    "load_generator", "load_discriminator", "load_training", "read_metadata",
    "read_official_pickle", "convert", "infer_generator_config", "infer_discriminator_config",
    # for tests and tools that inspect files: the format constants, the size bound, plain records
    "KINDS", "NETWORK_PREFIXES", "PathLike", "numel_bound", "to_plain", "PersistentRecord",
]
