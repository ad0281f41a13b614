"""Progress reporting degrades to plain log lines off a terminal."""

import logging

import pytest

from cvkit.logs import get_logger, progress


class ListHandler(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def progress_lines():
    """The messages logged by ``cvkit.progress`` during the test."""
    logger = get_logger("progress")
    handler = ListHandler()
    logger.addHandler(handler)
    previous_level = logger.level
    logger.setLevel(logging.INFO)
    yield handler.messages
    logger.removeHandler(handler)
    logger.setLevel(previous_level)


def test_progress_yields_everything_and_logs_plain_lines(progress_lines):
    items = list(progress(range(40), desc="epoch 1", lines=4, min_interval=0))
    assert items == list(range(40))
    assert len(progress_lines) == 4
    assert progress_lines[0].startswith("epoch 1  25% 10/40")
    assert progress_lines[-1].startswith("epoch 1 100% 40/40")


def test_progress_lines_carry_the_status_text(progress_lines):
    seen = []
    status = lambda: f"loss {len(seen)}"  # noqa: E731
    for item in progress(range(8), desc="e", lines=2, status=status, min_interval=0):
        seen.append(item)
    assert progress_lines[0].startswith("e  50% 4/8") and progress_lines[0].endswith("loss 4")
    assert progress_lines[-1].endswith("loss 8")


def test_a_fast_loop_logs_only_its_final_line(progress_lines):
    assert list(progress(range(40), desc="eval", lines=4)) == list(range(40))
    assert len(progress_lines) == 1 and progress_lines[0].startswith("eval 100% 40/40")
