"""Snakemake's HTML report opened in a real browser: headless Chromium driven by Selenium.

Snakemake 9's report is a single-page React app: its results appear only once the JavaScript has run
and a reader clicks through the navigation, so grepping the HTML proves only that the data is embedded.
`ReportPage` clicks through it like a reader: a category in the menu, then each result's view and
info buttons. Images are shown in the page; tables (CSV) are download links there, so their text is
read back through the link. Snakemake renders no HTML table for a CSV: the table PNGs are the drawn
tables. A driven browser rather than `chromium --dump-dom`: the results appear only after clicks, and
whether an image decoded (`naturalWidth`) is known only to the live page.

Needs Debian's `chromium` and `chromium-driver` (scripts/install-browser.sh) and `selenium`;
`headless_chromium()` skips the test with the reason when one is missing. Driver and browser paths are
explicit, so Selenium never looks for (or downloads) a driver of its own, and the browser resolves no
host names: the report must be self-contained.
"""

from __future__ import annotations

import ast
import base64
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",  # the sandbox refuses to run as root (CI)
    "--disable-dev-shm-usage",  # containers' /dev/shm is small
    "--disable-gpu",
    "--window-size=1400,1000",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost",  # offline: nothing may load from the web
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
)
TIMEOUT_S = 10  # for each step once the page is up
LOAD_TIMEOUT_S = 60

# `report("results/x.png", caption="../report/x.rst", category="...")` inside a rule's output.
REPORT_CALL = re.compile(r"\breport\((?P<args>[^()]*)\)")


@dataclass(frozen=True)
class ReportedOutput:
    """One `report()` output as the rules declare it."""

    path: str  # relative to the working directory, as the report lists it
    caption: Path
    category: str


def reported_outputs(rules_dir: Path) -> list[ReportedOutput]:
    """Every `report()` output declared in `rules_dir/*.smk`, read from the rules themselves so a new
    report output is checked without editing the test."""
    outputs = []
    for smk in sorted(rules_dir.glob("*.smk")):
        text = smk.read_text()
        matches = list(REPORT_CALL.finditer(text))
        if len(matches) != len(re.findall(r"\breport\(", text)):
            raise ValueError(f"{smk.name}: a report() call with nested parentheses: teach reported_outputs() it")
        for match in matches:
            call = ast.parse(f"report({match['args']})", mode="eval").body
            path = ast.literal_eval(call.args[0])
            kwargs = {keyword.arg: ast.literal_eval(keyword.value) for keyword in call.keywords}
            if "{" in path:
                raise ValueError(f"{smk.name}: report output {path} has wildcards: list its files here")
            caption = (smk.parent / kwargs["caption"]).resolve()  # relative to the rule file, as Snakemake reads it
            outputs.append(ReportedOutput(path, caption, kwargs.get("category", "Other")))
    return outputs


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def squash(text: str) -> str:
    return " ".join(text.split())


def caption_text(rst: Path) -> str:
    """The caption's text as the report shows it: Snakemake renders the reST with docutils too."""
    from docutils.core import publish_parts

    parser = _Text()
    parser.feed(publish_parts(rst.read_text(), writer="html")["body"])
    return squash("".join(parser.parts))


@contextmanager
def headless_chromium() -> Iterator:
    """A Selenium driver of headless Chromium; skips the calling test when the browser is missing."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing:
        pytest.skip(f"no {' or '.join(missing)}: install Debian's chromium and chromium-driver "
                    "(scripts/install-browser.sh, run by scripts/install.sh --system as root)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (requirements.txt)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


class ReportPage:
    """The report in the browser, navigated by clicks on its menu, breadcrumbs and buttons."""

    def __init__(self, driver, html: Path) -> None:
        from selenium.common.exceptions import ElementClickInterceptedException, StaleElementReferenceException
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver = driver
        # React re-renders replace elements, and a click may land while the layout still moves: retry both.
        self.wait = WebDriverWait(driver, TIMEOUT_S, poll_frequency=0.05,
                                  ignored_exceptions=(StaleElementReferenceException, ElementClickInterceptedException))
        if not html.is_file():
            raise FileNotFoundError(html)
        driver.get(html.resolve().as_uri())
        # The app has rendered its menu: the first render of the ~6 MB page is slow on a busy machine.
        WebDriverWait(driver, LOAD_TIMEOUT_S, poll_frequency=0.1).until(
            lambda _: driver.find_elements(By.XPATH, "//nav//ul/li/a[span[normalize-space()='Workflow']]"),
            message=f"the report's menu did not render within {LOAD_TIMEOUT_S} s")
        # The menu animates its width on every view change; without animations a click lands where aimed.
        driver.execute_script(
            "const style = document.createElement('style');"
            "style.textContent = '*, *::before, *::after { transition: none !important; animation: none !important; }';"
            "document.head.appendChild(style);")

    def _find(self, xpath: str, root=None):
        from selenium.webdriver.common.by import By

        root = root or self.driver
        return self.wait.until(lambda _: root.find_element(By.XPATH, xpath),
                               message=f"nothing at {xpath} after {TIMEOUT_S} s")

    def _click(self, xpath: str) -> None:
        from selenium.webdriver.common.by import By

        self.wait.until(lambda _: self.driver.find_element(By.XPATH, xpath).click() or True,
                        message=f"could not click {xpath} within {TIMEOUT_S} s")

    def _find_all(self, xpath: str) -> list:
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.XPATH, xpath)

    def workflow_description(self) -> str:
        """The text beside the rule graph on the start page."""
        return squash(self._find("//div[contains(@class, 'prose')][normalize-space()]").text)

    def categories(self) -> list[str]:
        """The categories the menu lists under its 'Results' heading."""
        self.home()
        items = self._find_all("//nav//ul/li[normalize-space()='Results']/following-sibling::li/a/span")
        return [span.text for span in items]

    def home(self) -> None:
        self._click("//nav/ol/li[1]/a")  # the first breadcrumb: the menu
        self._find("//nav//ul/li/a[span[normalize-space()='Workflow']]")

    def open_category(self, category: str) -> list[str]:
        """Click the category in the menu; the result files it lists."""
        self.home()
        self._click(f"//nav//ul/li/a[span[normalize-space()={_quote(category)}]]")
        self._find("//nav//table/tbody/tr")
        return [cell.text for cell in self._find_all("//nav//table/tbody/tr/td[1]")]

    @staticmethod
    def _button(path: str, icon: str) -> str:
        return f"//nav//table/tbody/tr[td[1][normalize-space()={_quote(path)}]]//a[@iconname={_quote(icon)}]"

    def view_image(self, path: str) -> dict:
        """Click the result's view button; the shown <img>'s bytes, natural and displayed sizes, once loaded."""
        self._click(self._button(path, "eye"))
        name = Path(path).name
        # The content pane reuses one <img>: wait for this file's source, fully decoded.
        image = self._find(f"//img[contains(@src, ';filename={name};')]")
        self.wait.until(lambda _: self.driver.execute_script("return arguments[0].complete", image),
                        message=f"{name} never finished loading")
        width, height, shown = self.driver.execute_script(
            "const img = arguments[0]; return [img.naturalWidth, img.naturalHeight, img.getBoundingClientRect().width]",
            image)
        return {"bytes": _data_uri_bytes(image.get_attribute("src")), "size": (width, height), "shown_width": shown}

    def download_text(self, path: str) -> str:
        """The text behind the result's download link (what a reader saves), fetched inside the page."""
        link = self._find(self._button(path, "eye"))
        assert link.get_attribute("download") == Path(path).name, f"{path}: the view button is no download link"
        return self.driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch(arguments[0]).then(r => r.text()).then(done, err => done('fetch failed: ' + err));",
            link.get_attribute("href"))

    def caption(self, path: str, category: str) -> str:
        """Click the result's info button; its 'Description'; then back to the category's list."""
        self._click(self._button(path, "information-circle"))
        self._find(f"//nav//ul/li/span/span[normalize-space()={_quote(path)}]")
        heading = self._find("//nav//ul/li[normalize-space()='Description']")
        text = squash(self._find("following-sibling::li[1]", root=heading).text)
        self._click(f"//nav/ol/li/a[normalize-space()={_quote(category)}]")  # breadcrumb back
        self._find("//nav//table/tbody/tr")
        return text

    def errors(self) -> list[str]:
        """Severe messages from the page's console (JavaScript errors, failed loads)."""
        return [entry["message"] for entry in self.driver.get_log("browser") if entry["level"] == "SEVERE"]

    def screenshot(self, path: Path) -> Path:
        assert self.driver.save_screenshot(str(path)), f"no screenshot written to {path}"
        return path


def _quote(text: str) -> str:
    """An XPath string literal (XPath 1 has no escapes)."""
    if "'" not in text:
        return f"'{text}'"
    return "concat('" + "', \"'\", '".join(text.split("'")) + "')"


def _data_uri_bytes(uri: str) -> bytes:
    header, _, payload = uri.partition(",")
    assert header.endswith(";base64"), f"not a base64 data URI: {header[:80]}"
    return base64.b64decode(payload)
