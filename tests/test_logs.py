"""Progress reporting degrades to plain log lines off a terminal."""

import logging

from cvkit.logs import get_logger, progress


class ListHandler(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_progress_yields_everything_and_logs_plain_lines():
    logger = get_logger("progress")
    handler = ListHandler()
    logger.addHandler(handler)
    previous_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        items = list(progress(range(40), desc="epoch 1", lines=4, min_interval=0))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)
    assert items == list(range(40))
    assert len(handler.messages) == 4
    assert handler.messages[0].startswith("epoch 1  25% 10/40")
    assert handler.messages[-1].startswith("epoch 1 100% 40/40")


def test_progress_lines_carry_the_status_text():
    logger = get_logger("progress")
    handler = ListHandler()
    logger.addHandler(handler)
    previous_level = logger.level
    logger.setLevel(logging.INFO)
    seen = []
    try:
        for item in progress(
            range(8), desc="e", lines=2, status=lambda: f"loss {len(seen)}", min_interval=0
        ):
            seen.append(item)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)
    assert handler.messages[0].startswith("e  50% 4/8") and handler.messages[0].endswith("loss 4")
    assert handler.messages[-1].endswith("loss 8")


def test_a_fast_loop_logs_only_its_final_line():
    logger = get_logger("progress")
    handler = ListHandler()
    logger.addHandler(handler)
    previous_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        assert list(progress(range(40), desc="eval", lines=4)) == list(range(40))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)
    assert len(handler.messages) == 1 and handler.messages[0].startswith("eval 100% 40/40")
