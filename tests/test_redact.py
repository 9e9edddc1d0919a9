"""Credentials never leave in what neurobatch writes."""

from __future__ import annotations

import pytest

from neurobatch.config import PipelineConfig
from neurobatch.redact import REDACTED, environment_secrets, redact, scrub, secrets_in

OPTIONS = {
    "key": "AKIAEXAMPLEKEY",
    "secret": "wJalrXUtnFEMI/K7MDENG",
    "token": None,
    "anon": False,
    "client_kwargs": {
        "endpoint_url": "http://127.0.0.1:9000",
        "aws_session_token": "FwoGZXIvYXdzEBY",
        "region_name": "us-east-1",
    },
}


def test_storage_options_are_redacted_wherever_they_sit() -> None:
    config = PipelineConfig.model_validate(
        {
            "name": "s3",
            "input": {"url": "s3://lab/data", "storage_options": OPTIONS},
            "loader": {"format": "photometry-csv", "annotation_key": "metadata"},
            "output": {"url": "https://ann:hunter22@example.org/out"},
        }
    ).model_dump(mode="json")
    redacted = redact(config)
    options = redacted["input"]["storage_options"]
    assert options["key"] == options["secret"] == REDACTED
    assert options["token"] is None  # nothing to hide
    assert options["anon"] is False
    assert options["client_kwargs"]["aws_session_token"] == REDACTED
    assert options["client_kwargs"]["endpoint_url"] == "http://127.0.0.1:9000"
    # a setting that merely ends in "key" outside storage_options is not a credential
    assert redacted["loader"]["annotation_key"] == "metadata"
    assert redacted["output"]["url"] == "https://***@example.org/out"
    # the original is untouched
    assert config["input"]["storage_options"]["key"] == "AKIAEXAMPLEKEY"


def test_free_text_is_scrubbed_of_the_values() -> None:
    secrets = secrets_in({"storage_options": OPTIONS, "url": "https://ann:hunter22@x.org/"})
    assert secrets == {"AKIAEXAMPLEKEY", "wJalrXUtnFEMI/K7MDENG", "FwoGZXIvYXdzEBY", "ann:hunter22"}
    text = (
        "403 for AKIAEXAMPLEKEY signing with wJalrXUtnFEMI/K7MDENG at https://ann:hunter22@x.org/"
    )
    scrubbed = scrub(text, secrets)
    assert not any(secret in scrubbed for secret in secrets)
    assert scrubbed == "403 for *** signing with *** at https://***@x.org/"


def test_short_values_are_not_scrubbed_from_text() -> None:
    # a two-letter "secret" would mangle every log line it appears in
    assert secrets_in({"storage_options": {"key": "ab"}}) == set()
    assert redact({"storage_options": {"key": "ab"}}) == {"storage_options": {"key": REDACTED}}


def test_secret_named_assignments_and_connection_strings_are_redacted_by_form() -> None:
    prologue = [
        "module load python/3.11",
        "export AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI",
        'export AZURE_STORAGE_CONNECTION_STRING="AccountName=lab;AccountKey=a2V5PT0=;"',
        "export AWS_SHARED_CREDENTIALS_FILE=/home/ann/.aws/credentials",
        "export OMP_NUM_THREADS=1",
    ]
    assert redact(prologue) == [
        "module load python/3.11",
        "export AWS_SECRET_ACCESS_KEY=***",
        "export AZURE_STORAGE_CONNECTION_STRING=***",
        # where a credential is kept, and ordinary settings, are not credentials
        "export AWS_SHARED_CREDENTIALS_FILE=/home/ann/.aws/credentials",
        "export OMP_NUM_THREADS=1",
    ]
    options = {"connection_string": "DefaultEndpointsProtocol=https;AccountKey=a2V5PT0=;"}
    assert redact({"storage_options": options}) == {
        "storage_options": {"connection_string": REDACTED}
    }
    # the key inside it is a secret too, wherever it is quoted again
    assert "a2V5PT0=" in secrets_in({"storage_options": options})
    assert scrub("AccountKey a2V5PT0= refused", secrets_in(options)) == "AccountKey *** refused"


def test_signed_urls_lose_their_signature() -> None:
    url = "https://lab.blob.core.windows.net/data/x.csv?sv=2022-11-02&sig=AbCdEf%2B123&se=2026"
    assert redact(url) == (
        "https://lab.blob.core.windows.net/data/x.csv?sv=2022-11-02&sig=***&se=2026"
    )
    s3 = "https://lab.s3.amazonaws.com/x.csv?X-Amz-Credential=AKIA%2F2026&X-Amz-Signature=0a1b2c"
    assert redact(s3) == (
        "https://lab.s3.amazonaws.com/x.csv?X-Amz-Credential=***&X-Amz-Signature=***"
    )


def test_the_environments_credentials_are_hidden_everywhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_SESSION_TOKEN", "FwoGZXIvYXdzEnvironment")
    monkeypatch.setenv("HOME_DIRECTORY_NAME", "FwoG")  # not named like a credential
    monkeypatch.setenv("PWD", "/work/lab")  # the shell's folder, not an ODBC password
    assert "FwoGZXIvYXdzEnvironment" in environment_secrets()
    assert "FwoG" not in environment_secrets()
    assert "/work/lab" not in environment_secrets()
    assert redact("Driver=x;Uid=ann;Pwd=hunter22;") == "Driver=x;Uid=ann;Pwd=***;"
    assert redact({"notes": "token FwoGZXIvYXdzEnvironment expired"}) == {
        "notes": "token *** expired"
    }
    assert scrub("token FwoGZXIvYXdzEnvironment expired", set()) == "token *** expired"
