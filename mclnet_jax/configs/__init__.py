"""Configs: the shared defaults, the ablation variants and the settings.

`common` holds the defaults (the release's SYSU-MM01 training), the named
variants and the parsing of `--config=FILE:ARG`; `settings` builds the
SYSU-MM01, RegDB and synthetic configs. The files under the repository's
`configs/` are thin entry points for `--config=` (README "Configs and
ablations").
"""
