"""The registered model as MLflow serves it: a pyfunc that renders prompts exactly as training did.

    model = mlflow.pyfunc.load_model("models:/reftflow-policy@champion")
    model.predict({"messages": [{"role": "user", "content": "Which gene?"}]})   # a chat request
    model.predict([{"question": "Ann has 3 pens. She gets 2 more. How many pens now?"}])  # an item
    model.predict(["Q: Ann has 3 pens. She gets 2 more. How many pens now?\nA:"])           # a raw prompt

A request is one item or a list of them (or a DataFrame with one item per row). An item with
`messages` goes through the tokenizer's chat template (`reftflow.prompting`); any other object
through the project's `data.prompt_template` (as a chat when `data.chat`); a string is a prompt already
rendered. Answers come
from greedy decoding (`reftflow.generation`), one string per item.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc

from reftflow.prompting import PROMPT_KEYS


def as_items(model_input: Any) -> list[Any]:
    """A request as a list of items (dicts) or prompt strings."""
    if hasattr(model_input, "to_dict"):  # a pandas DataFrame: one item per row
        rows = model_input.to_dict(orient="records")
        return [row[0] if set(row) == {0} else row for row in rows]  # a list of strings becomes column 0
    if isinstance(model_input, (str, dict)):
        return [model_input]
    return list(model_input)


class ReftflowModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from reftflow.modeling import load_model

        self.model, self.tokenizer = load_model(context.artifacts["model"])
        config = context.model_config or {}
        self.prompting = {k: config.get(k) for k in PROMPT_KEYS}
        self.max_new_tokens = int(config.get("max_new_tokens", 48))

    def prompts(self, model_input: Any) -> list[str]:
        from reftflow.data.prepare import with_prompts
        from reftflow.data.records import Record
        from reftflow.prompting import render_prompt

        out = []
        for item in as_items(model_input):
            if isinstance(item, str):
                out.append(item)
            elif isinstance(item, dict) and item.get("messages"):
                out.append(render_prompt(Record("request", item, messages=list(item["messages"])), self.tokenizer))
            elif isinstance(item, dict) and self.prompting["prompt_template"]:
                record = with_prompts([Record("request", item)], self.prompting["prompt_template"],
                                      bool(self.prompting["chat"]), self.prompting["system_prompt"])[0]
                out.append(render_prompt(record, self.tokenizer))
            elif isinstance(item, dict):
                out.append(render_prompt(Record("request", item), self.tokenizer))
            else:
                raise ValueError(f"a request item must be an object or a string, got {type(item).__name__}")
        return out

    def predict(self, context, model_input, params=None) -> list[str]:
        from reftflow.generation import generate_greedy

        return generate_greedy(self.model, self.tokenizer, self.prompts(model_input), self.max_new_tokens)


def log_pyfunc(model_dir: str | Path, prompting: dict[str, Any], max_new_tokens: int, pip_requirements: list[str]):
    """Log the model dir as a ReftflowModel in the active run (the reftflow code travels with it);
    `prompting`: data.prompt_template, data.chat and data.system_prompt."""
    import reftflow

    return mlflow.pyfunc.log_model(
        name="policy", python_model=ReftflowModel(), artifacts={"model": str(model_dir)},
        code_paths=[str(Path(reftflow.__file__).parent)], pip_requirements=pip_requirements,
        model_config={**prompting, "max_new_tokens": max_new_tokens},
    )
