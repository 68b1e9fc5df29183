"""The console in a real browser: Debian's chromium, headless, driven by chromium-driver through
python3-selenium, against the real mxhook-web process (seed 000's screens: log in, search by
status and period, page forward and back, a detail page, Download CSV, and a rule added,
disabled and deleted after the password prompt; a read-only user who sees no write form)."""
from __future__ import annotations

import os
import shutil
import time

import pytest

from tests.web.console_support import PASSWORD, USER, console_stack, fill_logs

webdriver = pytest.importorskip("selenium.webdriver", reason="python3-selenium is not installed")
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def chrome(download_dir: str):
    """Headless chromium that saves downloads in `download_dir`."""
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--disable-extensions"):
        options.add_argument(arg)
    if os.path.exists("/usr/bin/chromium"):
        options.binary_location = "/usr/bin/chromium"
    options.add_experimental_option("prefs", {"download.default_directory": download_dir,
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=webdriver.ChromeService(CHROMEDRIVER)
                              if hasattr(webdriver, "ChromeService")
                              else webdriver.chrome.service.Service(CHROMEDRIVER), options=options)
    driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": download_dir})
    driver.implicitly_wait(5)
    return driver


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    if not os.path.exists(CHROMEDRIVER):
        pytest.skip("chromium-driver is not installed (make setup installs it)")
    stack = console_stack(str(tmp_path_factory.mktemp("browser")))
    stack.logs = fill_logs(stack)
    stack.downloads = str(tmp_path_factory.mktemp("downloads"))
    stack.web.start()
    driver = chrome(stack.downloads)
    stack.url = lambda path: stack.client.base + path
    try:
        yield stack, driver
    finally:
        driver.quit()
        stack.web.stop()


def click(driver, element) -> None:
    """Click something that loads a page, and wait for the new one (the old page's elements
    would be found meanwhile)."""
    page = driver.find_element(By.TAG_NAME, "html")
    element.click()
    WebDriverWait(driver, 10).until(lambda _: gone(page))


def gone(element) -> bool:
    """Whether `element` left the document. Chromium says so with a stale-element error, or,
    caught while the new page replaces it (seen on a loaded machine), with an inspector error
    "Node with given id does not belong to the document" that selenium's staleness_of lets
    through."""
    try:
        element.is_enabled()
    except StaleElementReferenceException:
        return True
    except WebDriverException as exc:
        if "does not belong to the document" in str(exc):
            return True
        raise
    return False


def log_in(driver, url, password: str, user: str = USER) -> None:
    driver.get(url("/login"))
    driver.find_element(By.ID, "user").send_keys(user)
    driver.find_element(By.ID, "password").send_keys(password)
    click(driver, driver.find_element(By.ID, "login"))


def detail_links(driver) -> list[str]:
    return [a.get_attribute("href") for a in driver.find_elements(By.CSS_SELECTOR, "a.detail")]


def test_log_in_refuses_a_wrong_password_then_lets_alice_in(site):
    stack, driver = site
    log_in(driver, stack.url, "not the password")
    assert "Wrong user name or password" in driver.find_element(By.ID, "error").text
    log_in(driver, stack.url, PASSWORD)
    assert driver.find_element(By.TAG_NAME, "h1").text == "Inbound log"
    assert driver.get_cookie("mxhook_session")["secure"] is True


def test_search_by_status_and_period_and_page_forward_and_back(site):
    stack, driver = site
    driver.get(stack.url("/logs/inbound"))
    Select(driver.find_element(By.ID, "status")).select_by_visible_text("denied")
    driver.find_element(By.ID, "since").send_keys("2026-09-21T14:14")
    click(driver, driver.find_element(By.ID, "search"))
    first = detail_links(driver)
    assert len(first) == 10
    assert {s.text for s in driver.find_elements(By.CSS_SELECTOR, "#rows .status")} == {"denied"}
    click(driver, driver.find_element(By.ID, "next"))
    second = detail_links(driver)
    click(driver, driver.find_element(By.ID, "next"))
    third = detail_links(driver)
    assert len(second) == 10 and len(third) == 4  # 24 denied rows since 14:14
    assert not driver.find_elements(By.ID, "next")
    assert not set(first) & set(second) and not set(second) & set(third)
    click(driver, driver.find_element(By.ID, "previous"))
    assert detail_links(driver) == second
    click(driver, driver.find_element(By.ID, "previous"))
    assert detail_links(driver) == first
    assert driver.find_element(By.ID, "status").get_attribute("value") == "denied"


def test_a_detail_page(site):
    stack, driver = site
    driver.get(stack.url("/logs/inbound?status=deferred"))
    click(driver, driver.find_element(By.CSS_SELECTOR, "a.detail"))
    detail = driver.find_element(By.ID, "detail").text
    for field in ("Date", "Status deferred", "Host name", "From address a@else.example",
                  "Destination address invoices@ours.example", "Message ID <in@else>",
                  "Filter name hook", "Error reason"):
        assert field in detail
    assert "HTTP 503" in driver.find_element(By.CSS_SELECTOR, "table.attempts").text


def test_download_csv_is_what_the_cli_prints(site):
    stack, driver = site
    driver.get(stack.url("/logs/inbound?status=denied&since=2026-09-21T14:14"))
    driver.find_element(By.ID, "download").click()  # an attachment: the page stays
    path = os.path.join(stack.downloads, "inbound-log.csv")
    deadline = time.monotonic() + 20
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.1)
    with open(path, "rb") as f:
        downloaded = f.read()
    cli = stack.cli("log", "inbound", "--csv", "--status", "denied", "--since", "2026-09-21T14:14",
                    "--limit", "1000000").stdout
    assert downloaded.decode("utf-8") == cli and cli.count("\n") == 25


def test_add_disable_and_delete_a_rule_with_the_password(site):
    stack, driver = site
    driver.get(stack.url("/settings/rules"))
    click(driver, driver.find_element(By.ID, "add-rule"))
    driver.find_element(By.ID, "name").send_keys("invoices")
    driver.find_element(By.ID, "url").send_keys("https://127.0.0.1:9/invoices")
    driver.find_element(By.ID, "when").send_keys("To~^invoices@")
    click(driver, driver.find_element(By.ID, "save"))
    row = driver.find_element(By.ID, "rule-invoices")
    assert "enabled" in row.find_element(By.CLASS_NAME, "state").text
    click(driver, row.find_element(By.CLASS_NAME, "toggle"))
    row = driver.find_element(By.ID, "rule-invoices")
    assert row.find_element(By.CLASS_NAME, "state").text == "disabled"
    assert stack("GET", "/v1/rules/invoices").json()["enabled"] is False

    click(driver, row.find_element(By.CLASS_NAME, "delete"))
    driver.find_element(By.ID, "confirm-password").send_keys("a wrong one")
    click(driver, driver.find_element(By.ID, "confirm-delete"))
    assert "wrong password" in driver.find_element(By.ID, "error").text
    assert stack("GET", "/v1/rules/invoices").status == 200
    driver.find_element(By.ID, "confirm-password").send_keys(PASSWORD)
    click(driver, driver.find_element(By.ID, "confirm-delete"))
    assert "rule invoices deleted" in driver.find_element(By.CLASS_NAME, "flash").text
    assert not driver.find_elements(By.ID, "rule-invoices")
    assert stack("GET", "/v1/rules/invoices").status == 404


def test_a_read_only_user_sees_the_settings_without_a_form_to_change_them(site):
    stack, driver = site
    stack.cli("user", "add", "rita", "--read-only", "--password-file", "-", input="only looking 1\n")
    stack.cli("rule", "add", "watched", "--url", "https://127.0.0.1:9/w", "--when", "To~^watched@")
    driver.get(stack.url("/logs/inbound"))
    click(driver, driver.find_element(By.ID, "logout"))
    log_in(driver, stack.url, "only looking 1", user="rita")
    assert "rita (read-only)" in driver.find_element(By.CSS_SELECTOR, "form.logout").text
    driver.get(stack.url("/settings/rules"))
    row = driver.find_element(By.ID, "rule-watched")
    driver.implicitly_wait(0)  # what must be absent is looked for once
    try:
        assert "enabled" in row.find_element(By.CLASS_NAME, "state").text
        assert not row.find_elements(By.CLASS_NAME, "toggle") and not row.find_elements(By.CLASS_NAME, "delete")
        assert not driver.find_elements(By.ID, "add-rule")
        driver.get(stack.url("/logs/inbound?status=deferred"))
        click(driver, driver.find_element(By.CSS_SELECTOR, "a.detail"))
        assert "HTTP 503" in driver.find_element(By.CSS_SELECTOR, "table.attempts").text
        assert not driver.find_elements(By.ID, "replay")
    finally:
        driver.implicitly_wait(5)
    driver.get(stack.url("/settings/rules/watched/delete"))  # typed in: refused
    assert "read-only" in driver.find_element(By.TAG_NAME, "main").text
    assert stack("GET", "/v1/rules/watched").status == 200
