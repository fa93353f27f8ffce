"""The reporter thread keeps reporting after a report fails, and the row's text form."""

import logging

import pytest
from django.db import transaction

from marathon import Lock, Marathon, lock_released
from tests.processes import FAST, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_failing_report_is_logged_and_later_reports_still_run(caplog):
    """A release inside a transaction that rolls back signals on the reporter thread: a
    receiver that raises there is logged, and the reporter goes on with the next report."""
    reported = []

    def breaks(sender, **kwargs):
        if kwargs["name"] == "rolled-back":
            raise RuntimeError("the receiver broke")

    lock_released.connect(breaks)
    try:
        with caplog.at_level(logging.ERROR, logger="marathon"):
            with pytest.raises(RuntimeError, match="roll back"):
                with transaction.atomic():
                    lock = Marathon("rolled-back", **FAST)
                    assert lock.acquire()
                    lock.release()  # takes effect when the transaction ends
                    raise RuntimeError("roll back")
            wait_for(
                lambda: "A marathon report failed." in caplog.text,
                what="the failed report logged",
            )
            assert "the receiver broke" in caplog.text
            assert not Lock.objects.filter(name="rolled-back").exists()
            later = Marathon("reports-after", on_lost=reported.append, **FAST)
            assert later.acquire()
            Lock.objects.filter(name="reports-after").delete()
            wait_for(lambda: reported, what="the next report")
    finally:
        lock_released.disconnect(breaks)
    assert reported == [later] and not later.release()


def test_a_lock_row_reads_as_its_name():
    assert str(Lock(name="nightly-report")) == "nightly-report"
