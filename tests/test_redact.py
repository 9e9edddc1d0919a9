"""Credentials never leave in what neurobatch writes."""

from __future__ import annotations

from neurobatch.config import PipelineConfig
from neurobatch.redact import REDACTED, redact, scrub, secrets_in

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
