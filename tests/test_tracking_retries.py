"""RunLogger.log_dataset when another project logs the same data file to the same experiment at the same
moment: MLflow's store looks the dataset up, then inserts it, so both can miss it and the second insert
breaks the (experiment, name, digest) key. The logger tries again and links to the first one's row; any
other refusal is raised at once."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from reftflow.tracking import RunLogger

RACE = ('BAD_REQUEST: (psycopg.errors.UniqueViolation) duplicate key value violates unique constraint '
        '"dataset_pk"\nDETAIL:  Key (experiment_id, name, digest)=(1, train, cf93) already exists.')


class _Client:
    def __init__(self, failures: list[Exception]):
        self.failures, self.logged = failures, []

    def log_inputs(self, run_id, datasets):
        if self.failures:
            raise self.failures.pop(0)
        self.logged.append((run_id, datasets))


def _logger(client: _Client) -> RunLogger:
    logger = RunLogger.__new__(RunLogger)  # no tracking URI needed: the client is the one under test
    logger.mlflow, logger.run_id, logger.client = SimpleNamespace(), "run-1", client
    return logger


def test_a_dataset_another_run_inserted_at_the_same_moment_is_logged_on_the_next_try(tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text('{"question": "1+1", "answer": "2"}\n')
    client = _Client([Exception(RACE)])
    md5 = _logger(client).log_dataset(data, "train", context="training")
    assert len(client.logged) == 1 and client.logged[0][0] == "run-1"
    [entry] = client.logged[0][1]
    assert entry.dataset.digest == md5 and entry.dataset.name == "train"


def test_any_other_refusal_is_raised_at_once(tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text("{}\n")
    client = _Client([Exception("PERMISSION_DENIED: run run-1 is deleted")])
    with pytest.raises(Exception, match="PERMISSION_DENIED"):
        _logger(client).log_dataset(data, "train", context="training")
    assert client.logged == []
