"""The operator console in a real browser: Debian's chromium, driven by chromedriver
through selenium, against the real credvault server and a fake Fleetio (both started
by tests/console.rs, which passes their addresses and the secrets in the environment
and scans what is saved here afterwards).

Every page visited is saved in $ARTIFACTS as a screenshot and its HTML.
"""

import os
import pathlib
import tempfile

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

URL = os.environ["CONSOLE_URL"]
ADMIN = os.environ["ADMIN_TOKEN"]
READER = os.environ["READER_TOKEN"]
ART = pathlib.Path(os.environ["ARTIFACTS"])
KEY_OK = os.environ["KEY_OK"]
TOKEN_OK = os.environ["TOKEN_OK"]
TOKEN_BAD = os.environ["TOKEN_BAD"]
KEY_ROTATED = os.environ["KEY_ROTATED"]
TOKEN_ROTATED = os.environ["TOKEN_ROTATED"]


@pytest.fixture
def browser():
    profile = tempfile.mkdtemp(prefix="credvault-chromium-")
    opts = Options()
    opts.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    for arg in [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,1000",
        f"--user-data-dir={profile}",
    ]:
        opts.add_argument(arg)
    service = Service(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
    driver = webdriver.Chrome(service=service, options=opts)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def save(d, name):
    """A screenshot and the HTML of the page now shown."""
    d.save_screenshot(str(ART / f"{name}.png"))
    (ART / f"{name}.html").write_text(d.page_source)


def assert_labelled(d):
    """Every visible control has a label that names it."""
    controls = d.find_elements(
        By.CSS_SELECTOR, "input:not([type=hidden]), select, textarea"
    )
    assert controls, "the page has controls"
    for el in controls:
        ident = el.get_attribute("id")
        assert ident, f"a {el.tag_name} without an id"
        labels = d.find_elements(By.CSS_SELECTOR, f'label[for="{ident}"]')
        assert labels and labels[0].text.strip(), f"{ident} has no label"


def active(d):
    return d.switch_to.active_element


def tab_until(d, found, what, limit=80):
    """Presses Tab until `found(active element)`: the control is reachable by keyboard."""
    for _ in range(limit):
        el = active(d)
        if found(el):
            return el
        ActionChains(d).send_keys(Keys.TAB).perform()
    raise AssertionError(f"{what} was not reached with the Tab key")


def tab_to(d, ident):
    return tab_until(d, lambda el: el.get_attribute("id") == ident, ident)


def type_into(d, ident, text):
    tab_to(d, ident).send_keys(text)


def navigate(d, act):
    """Does `act` and waits until the next page has replaced this one."""
    old = d.find_element(By.TAG_NAME, "html")
    act()
    WebDriverWait(d, 20).until(
        lambda d: old.id != d.find_element(By.TAG_NAME, "html").id
    )


def submit_with_enter(d):
    """Presses Enter in the focused field and waits for the next page."""
    navigate(d, lambda: active(d).send_keys(Keys.ENTER))


def click(d, el):
    """Clicks a link or button and waits for the next page."""
    navigate(d, el.click)


def sign_in_by_keyboard(d, token):
    d.get(URL + "/sign-in")
    assert_labelled(d)
    type_into(d, "f-token", token)
    submit_with_enter(d)
    assert d.current_url.endswith("/credentials"), d.current_url + d.page_source


def notice(d):
    return d.find_element(By.CSS_SELECTOR, ".notice").text


def row_of(d, name):
    link = d.find_elements(By.LINK_TEXT, name)
    return link[0].find_element(By.XPATH, "./ancestor::tr") if link else None


def test_an_operator_adds_checks_rotates_and_deletes(browser):
    d = browser
    d.get(URL + "/credentials")
    assert "/sign-in" in d.current_url, "a page needs a session"
    save(d, "01-sign-in")
    sign_in_by_keyboard(d, ADMIN)
    save(d, "02-credentials")

    # Add, by keyboard alone: the link, each field, Enter to submit; verify is on by default.
    tab_until(d, lambda el: el.text == "Add credential", "the Add credential link")
    submit_with_enter(d)
    assert d.current_url.endswith("/credentials/new")
    assert_labelled(d)
    assert d.find_element(By.ID, "f-verify").is_selected(), "verify is on by default"
    for ident in ["f-api_key", "f-account_token"]:
        el = d.find_element(By.ID, ident)
        assert (
            el.get_attribute("type") == "password"
            and el.get_attribute("autocomplete") == "off"
        )
    save(d, "03-add")
    type_into(d, "f-name", "fleet-main")
    type_into(d, "f-description", "Main Fleetio account")
    type_into(d, "f-api_key", KEY_OK)
    type_into(d, "f-account_token", TOKEN_OK)
    type_into(d, "f-api_version", "2024-03-15")
    submit_with_enter(d)
    assert "/credentials/cred_" in d.current_url, d.current_url
    assert notice(d) == "Credential saved."
    assert "valid" in d.find_element(By.CSS_SELECTOR, "dl.facts .status").text
    facts = d.find_element(By.CSS_SELECTOR, "dl.facts").text
    assert "API version\n2024-03-15" in facts, facts
    save(d, "04-credential")

    # One whose account token the fake rejects: the error sits by that field, nothing is stored.
    d.get(URL + "/credentials/new")
    d.find_element(By.ID, "f-name").send_keys("fleet-bad")
    d.find_element(By.ID, "f-api_key").send_keys(KEY_OK)
    d.find_element(By.ID, "f-account_token").send_keys(TOKEN_BAD)
    click(
        d,
        d.find_element(
            By.CSS_SELECTOR, "form[action='/credentials/new'] button[type=submit]"
        ),
    )
    error = d.find_element(By.ID, "err-account_token").text
    assert "rejected the account token" in error, error
    token_input = d.find_element(By.ID, "f-account_token")
    assert token_input.get_attribute("aria-invalid") == "true"
    assert token_input.get_attribute("value") == "", "a secret is never filled back in"
    assert d.find_element(By.ID, "f-api_key").get_attribute("value") == ""
    assert d.find_element(By.ID, "f-name").get_attribute("value") == "fleet-bad", (
        "the rest is kept"
    )
    save(d, "05-add-rejected")

    # The list, filtered on status VALID: the new one is there, the rejected one nowhere.
    d.get(URL + "/credentials")
    assert_labelled(d)
    tab_to(d, "f-status").send_keys("valid")
    tab_until(d, lambda el: el.text == "Filter", "the Filter button")
    submit_with_enter(d)
    names = [
        a.text for a in d.find_elements(By.CSS_SELECTOR, "tbody tr td:first-child a")
    ]
    assert names == ["fleet-main"], names
    row = row_of(d, "fleet-main")
    assert row.find_element(By.CSS_SELECTOR, ".status").text == "valid"
    save(d, "06-credentials-valid")

    # A refused rotation says so at the top, with focus there, naming the field as
    # the form does; the API version stays as it was.
    click(d, row.find_element(By.TAG_NAME, "a"))
    assert d.find_element(By.ID, "f-api_version").get_attribute("value") == "2024-03-15"
    d.find_element(By.ID, "f-api_key").send_keys(KEY_ROTATED)
    d.find_element(By.ID, "f-account_token").send_keys(TOKEN_BAD)
    click(d, d.find_element(By.CSS_SELECTOR, "form[action$='/rotate'] button"))
    summary = d.find_element(By.ID, "problem")
    assert d.switch_to.active_element == summary, "focus moves to the summary"
    assert "Not done." in summary.text and "Account token:" in summary.text, (
        summary.text
    )
    assert "account_token" not in summary.text, summary.text
    assert (
        summary.location["y"]
        < d.find_element(By.CSS_SELECTOR, "dl.facts").location["y"]
    )
    save(d, "06b-rotate-refused")

    # Rotate (checked with Fleetio first) typing only the key and the token: the
    # API version is kept. Then verify now.
    assert d.find_element(By.ID, "f-api_version").get_attribute("value") == "2024-03-15"
    d.find_element(By.ID, "f-api_key").send_keys(KEY_ROTATED)
    d.find_element(By.ID, "f-account_token").send_keys(TOKEN_ROTATED)
    click(d, d.find_element(By.CSS_SELECTOR, "form[action$='/rotate'] button"))
    assert notice(d) == "Secret rotated."
    facts = d.find_element(By.CSS_SELECTOR, "dl.facts").text
    assert "…" + KEY_ROTATED[-4:] in facts and "\n2\n" in facts, facts
    assert "API version\n2024-03-15" in facts, facts
    click(d, d.find_element(By.CSS_SELECTOR, "form[action$='/verify'] button"))
    assert notice(d).startswith("Verified with the provider")
    audit = d.find_element(
        By.CSS_SELECTOR, "section[aria-labelledby=h-audit] table"
    ).text
    assert (
        "VerifyCredential" in audit
        and "UpdateCredential" in audit
        and "console" in audit
    ), audit
    save(d, "07-rotated-verified")
    # Thirty views of the page later, the rotation is still shown.
    for _ in range(30):
        d.get(d.current_url)
    audit = d.find_element(
        By.CSS_SELECTOR, "section[aria-labelledby=h-audit] table"
    ).text
    assert "UpdateCredential" in audit and "GetCredential\n" not in audit, audit

    # Versions: back to the first secret, as a new version.
    versions = d.find_elements(
        By.CSS_SELECTOR, "section[aria-labelledby=h-versions] tbody tr"
    )
    assert len(versions) == 2, len(versions)
    click(d, d.find_element(By.XPATH, "//button[normalize-space()='Roll back to 1']"))
    assert notice(d).startswith("Rolled back")
    facts = d.find_element(By.CSS_SELECTOR, "dl.facts").text
    assert "…" + KEY_OK[-4:] in facts and "\n3\n" in facts, facts
    # Version 1 was verified valid: the rollback carries that forward.
    assert "valid" in d.find_element(By.CSS_SELECTOR, "dl.facts .status").text
    save(d, "07b-rolled-back")

    # Delete: only once the name is typed.
    type_into(d, "f-confirm_name", "fleet-wrong")
    submit_with_enter(d)
    assert (
        "type the credential's name" in d.find_element(By.ID, "err-confirm_name").text
    )
    save(d, "08-delete-unconfirmed")
    type_into(d, "f-confirm_name", "fleet-main")
    submit_with_enter(d)
    assert d.current_url.endswith("/credentials?done=deleted")
    assert notice(d) == "Credential deleted."
    assert row_of(d, "fleet-main") is None
    save(d, "09-deleted")

    # Sign out: the session is gone.
    click(d, d.find_element(By.CSS_SELECTOR, "form.signout button"))
    assert "/sign-in" in d.current_url
    d.get(URL + "/credentials")
    assert "/sign-in" in d.current_url


def test_a_viewer_sees_no_write_controls_and_pages_through(browser):
    d = browser
    sign_in_by_keyboard(d, READER)
    assert not d.find_elements(By.LINK_TEXT, "Add credential")
    rows = d.find_elements(By.CSS_SELECTOR, "tbody tr")
    assert len(rows) == 25, "a page holds 25"
    # Expiring soon is highlighted, and filtered on.
    soon = row_of(d, "fleet-expiring")
    assert soon is not None and "soon" in soon.find_elements(By.TAG_NAME, "td")[
        4
    ].get_attribute("class")
    save(d, "10-viewer-credentials")
    click(d, d.find_element(By.LINK_TEXT, "Next page"))
    assert len(d.find_elements(By.CSS_SELECTOR, "tbody tr")) >= 3
    click(d, d.find_element(By.LINK_TEXT, "First page"))
    d.find_element(By.ID, "f-expiring").click()
    click(d, d.find_element(By.CSS_SELECTOR, "form.filters button"))
    names = [
        a.text for a in d.find_elements(By.CSS_SELECTOR, "tbody tr td:first-child a")
    ]
    assert names == ["fleet-expiring"], names
    save(d, "11-viewer-expiring")
    click(d, d.find_element(By.LINK_TEXT, "fleet-expiring"))
    forms = [f.get_attribute("action") for f in d.find_elements(By.TAG_NAME, "form")]
    assert all(f.endswith("/sign-out") for f in forms), forms
    save(d, "12-viewer-credential")
    d.get(URL + "/credentials/new")
    assert "lacks credentials.write" in notice(d)
