"""Re-id evaluation: the SYSU-MM01 and RegDB protocols and the run's
evaluators (docs/evaluation.md).

`protocols` draws queries and galleries (pure numpy); `sysu.Sysu` and
`regdb.Regdb` evaluate a split's features (one class per protocol);
`features` extracts a split's features once per state (`FeatureStore`);
`registry.build` makes the named evaluators of `config.evals`
(`common.ProtocolEvaluator`, `figures.FiguresEvaluator`); `results` holds
what the protocols return; `batch_stats` the BatchNorm statistics evaluation
uses.
"""
