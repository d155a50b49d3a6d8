"""The config: one frozen tree, read from YAML, never changed while it is in use.

- `schema`: the tree (`Config`, `ServerConfig`, `ModelConfig`, ...) and its defaults
- `load`: YAML text to a `Config`, every problem reported at once with its key path
- `units`: durations and sizes, as written in the config and in requests
- `edit`: one `models:` entry added to or removed from a config file, comments kept
- `default.yaml`: the embedded default (`dx serve` with no config)

The names below are the package's public face; import them from `dxproxy.config`.
"""

from dxproxy.config.load import (
    default_config_text,
    load_config,
    load_config_file,
    load_default_config,
)
from dxproxy.config.schema import (
    ENGINE_KINDS,
    AuthConfig,
    Config,
    ConfigError,
    FleetConfig,
    FleetNode,
    KeyLimits,
    LimitsConfig,
    ModelConfig,
    RemoteUpstream,
    ServerConfig,
)
from dxproxy.config.units import parse_duration, parse_size

__all__ = [
    "ENGINE_KINDS",
    "AuthConfig",
    "Config",
    "ConfigError",
    "FleetConfig",
    "FleetNode",
    "KeyLimits",
    "LimitsConfig",
    "ModelConfig",
    "RemoteUpstream",
    "ServerConfig",
    "default_config_text",
    "load_config",
    "load_config_file",
    "load_default_config",
    "parse_duration",
    "parse_size",
]
