"""What django-marathon 0.1 documented keeps working as written."""

import pytest
from django.contrib import admin

from marathon import Lock as LockModel
from marathon import Marathon

pytestmark = pytest.mark.django_db(transaction=True)


# The seed README's example, as written.
from marathon.models import Lock  # noqa: E402


def my_task():
    lock_name = "my-unique-task-lock"
    # Get the existing lock or create a new one
    lock, created = Lock.objects.get_or_create(name=lock_name)
    if not created:
        print("Task is already running, please try again later.")
        return
    try:
        # Your task logic here
        print("Task is running...")
    except Exception as e:
        print(f"An error occurred: {str(e)}")
    finally:
        # Release the lock
        lock.delete()
    print("Task completed successfully.")


def test_readme_example_runs_when_free(capsys):
    my_task()
    assert (
        capsys.readouterr().out == "Task is running...\nTask completed successfully.\n"
    )
    assert not Lock.objects.exists()


def test_readme_example_is_skipped_while_a_marathon_holds_the_lock(capsys):
    with Marathon("my-unique-task-lock", heartbeat=0.2, stale_after=2.0) as held:
        my_task()
        assert (
            capsys.readouterr().out
            == "Task is already running, please try again later.\n"
        )
        assert Lock.objects.get(name="my-unique-task-lock").owner == held.owner
    assert not Lock.objects.exists()


def test_a_lock_made_the_readme_way_blocks_marathon_and_delete_releases_it():
    lock, created = Lock.objects.get_or_create(name="by-hand")
    assert created
    assert Lock.objects.get_or_create(name="by-hand")[1] is False
    assert Marathon("by-hand", heartbeat=0.2, stale_after=2.0).acquire() is False
    lock.delete()
    with Marathon("by-hand", heartbeat=0.2, stale_after=2.0):
        pass


def test_single_runner_mixin():
    from marathon.mixins import SingleRunner

    class Task(SingleRunner):
        lock_name = "legacy"

    first, second = Task(), Task()
    assert first.is_locked() is False  # took it
    assert second.is_locked() is True
    assert Marathon("legacy", heartbeat=0.2, stale_after=2.0).acquire() is False
    first.release_lock()
    assert not Lock.objects.exists()
    with Marathon("legacy", heartbeat=0.2, stale_after=2.0):
        assert Task().is_locked() is True


def test_single_runner_without_lock_name():
    from marathon.mixins import SingleRunner

    with pytest.raises(NotImplementedError):
        SingleRunner().is_locked()


def test_verbose_name():
    from django.apps import apps

    assert apps.get_app_config("marathon").verbose_name == "Marathon Single Runner"


def test_admin_lists_locks(admin_client):
    assert LockModel is Lock
    assert admin.site.is_registered(Lock), "0.1 registered Lock in the admin"
    Lock.objects.create(name="shown-in-admin")
    response = admin_client.get("/admin/marathon/lock/")
    assert response.status_code == 200
    assert b"shown-in-admin" in response.content
