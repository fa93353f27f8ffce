"""The admin in a real browser (issue 14): headless Chromium, driven by Selenium, on pytest-django's live_server.

Skipped, saying what is missing, without Chromium, chromedriver or selenium:
    apt-get install chromium chromium-driver && python -m pip install selenium
"""

import shutil
import tempfile

import pytest
from django.contrib.auth.models import Permission, User

from marathon import Lock, Marathon

CHROMIUM = (
    shutil.which("chromium")
    or shutil.which("chromium-browser")
    or shutil.which("google-chrome")
)
CHROMEDRIVER = shutil.which("chromedriver")
try:
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import Select, WebDriverWait
except ImportError:
    webdriver = None

MISSING = [
    what
    for what, found in (
        ("chromium", CHROMIUM),
        ("chromedriver", CHROMEDRIVER),
        ("selenium", webdriver),
    )
    if not found
]
pytestmark = [
    pytest.mark.skipif(
        bool(MISSING),
        reason="the browser tests need %s: apt-get install chromium chromium-driver; python -m pip install selenium"
        % " and ".join(MISSING),
    ),
    pytest.mark.django_db(transaction=True),
]

CHANGELIST = "/admin/marathon/lock/"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--window-size=1280,1024",
]


@pytest.fixture(scope="module")
def browser():
    profile = tempfile.mkdtemp(prefix="marathon-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS + ["--user-data-dir=" + profile]:
        options.add_argument(flag)
    service = webdriver.ChromeService(
        executable_path=CHROMEDRIVER
    )  # a path: Selenium downloads nothing
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def operator(browser, live_server):
    """Log a new staff user with these permissions on locks in through the admin's login form."""

    def log_in(*codenames):
        user = User.objects.create_user("ops", password="secret-ops", is_staff=True)
        permissions = Permission.objects.filter(
            content_type__app_label="marathon", codename__in=codenames
        )
        user.user_permissions.set(permissions)
        browser.delete_all_cookies()
        browser.get(live_server.url + "/admin/login/?next=" + CHANGELIST)
        browser.find_element(By.NAME, "username").send_keys("ops")
        browser.find_element(By.NAME, "password").send_keys("secret-ops")
        click(browser, browser.find_element(By.CSS_SELECTOR, "input[type=submit]"))
        assert browser.current_url == live_server.url + CHANGELIST, browser.page_source
        return browser

    return log_in


def click(browser, element):
    """Click something that loads a page, and wait until the new page is there."""
    page = browser.find_element(By.TAG_NAME, "html")
    element.click()
    WebDriverWait(browser, 10).until(expected_conditions.staleness_of(page))


def make_locks():
    running = Marathon("running-job", heartbeat=0.2, stale_after=45)
    assert running.acquire()
    Lock.objects.create(
        name="stale-job", owner="web1:42", heartbeat_at="2000-01-01T00:00:00Z"
    )
    Lock.objects.get_or_create(name="manual-job")
    return running


def rows(browser):
    """The changelist as {name: {column: text}}."""
    table = {}
    for row in browser.find_elements(By.CSS_SELECTOR, "#result_list tbody tr"):
        cells = {
            cell.get_attribute("class").split()[0][len("field-") :]: cell.text
            for cell in row.find_elements(By.CSS_SELECTOR, "th, td")
            if cell.get_attribute("class").startswith("field-")
        }
        table[cells["name"]] = cells
    return table


def wait_for(condition, timeout=10.0):
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_list_filter_and_release_with_confirmation(operator):
    running = make_locks()
    try:
        browser = operator("view_lock", "delete_lock")
        shown = rows(browser)
        assert sorted(shown) == ["manual-job", "running-job", "stale-job"]
        assert (shown["running-job"]["state"], shown["running-job"]["holder"]) == (
            "running",
            running.owner,
        )
        assert shown["running-job"]["last_heartbeat"].endswith(" s ago")
        assert shown["running-job"]["holder_stale_after"] == "45 s"
        assert shown["running-job"]["fence"] == str(running.fence)
        assert (
            shown["stale-job"]["state"] == "stale"
            and shown["manual-job"]["state"] == "manual"
        )

        click(
            browser,
            browser.find_element(By.ID, "changelist-filter").find_element(
                By.LINK_TEXT, "stale"
            ),
        )
        assert sorted(rows(browser)) == ["stale-job"]
        click(
            browser,
            browser.find_element(By.ID, "changelist-filter").find_element(
                By.LINK_TEXT, "All"
            ),
        )
        assert sorted(rows(browser)) == ["manual-job", "running-job", "stale-job"]

        for name in ("running-job", "stale-job"):
            pk = Lock.objects.get(name=name).pk
            browser.find_element(
                By.CSS_SELECTOR, "input[name=_selected_action][value='%d']" % pk
            ).click()
        Select(browser.find_element(By.NAME, "action")).select_by_value("release_locks")
        click(browser, browser.find_element(By.NAME, "index"))

        warning = browser.find_element(By.ID, "running").text
        assert (
            "1 of these locks is running" in warning
            and "running-job, held by %s" % running.owner in warning
        )
        assert "stale-job" not in warning
        confirm = browser.find_elements(By.CSS_SELECTOR, "#locks tbody tr")
        assert [row.text.split()[:3] for row in confirm] == [
            ["running-job", "running", running.owner],
            ["stale-job", "stale", "web1:42"],
        ]
        assert Lock.objects.count() == 3  # nothing released before the confirmation

        click(
            browser,
            browser.find_element(
                By.CSS_SELECTOR, "input[type=submit][value^='Yes, release']"
            ),
        )
        message = browser.find_element(By.CSS_SELECTOR, "ul.messagelist li").text
        assert message == "Released 2 lock(s): running-job, stale-job."
        assert sorted(rows(browser)) == ["manual-job"]
        wait_for(lambda: running.lost)  # its holder finds out at its next heartbeat
    finally:
        running.release()


def test_without_the_delete_permission_no_release_and_no_editing(operator, live_server):
    running = make_locks()
    try:
        browser = operator("view_lock", "change_lock")
        assert sorted(rows(browser)) == ["manual-job", "running-job", "stale-job"]
        actions = browser.find_elements(By.CSS_SELECTOR, "select[name=action] option")
        assert "release_locks" not in [
            option.get_attribute("value") for option in actions
        ]
        assert not browser.find_elements(
            By.CSS_SELECTOR, "a[href$='/marathon/lock/add/']"
        )

        click(
            browser, browser.find_element(By.LINK_TEXT, "running-job")
        )  # a read-only view of the row
        page = browser.find_element(By.ID, "content").text
        assert running.owner in page and str(running.fence) in page
        assert not browser.find_elements(
            By.CSS_SELECTOR, "input[name=name], input[name=_save], .deletelink"
        )
        assert running.held
    finally:
        running.release()
