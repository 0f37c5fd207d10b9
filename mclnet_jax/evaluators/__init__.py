"""The SYSU-MM01 and RegDB evaluation protocols (README "Evaluation protocols").

`protocols` draws queries and galleries (pure numpy), `features` extracts a
test split's features once with a predict function, `sysu` and `regdb` are
the evaluators, `results` holds what they return, and `common.from_config`
builds the evaluator a config asks for.
"""
