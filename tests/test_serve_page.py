"""The page at `bigtransfer serve`'s `/`, driven in headless Chromium: it shows the model from /info and the same
predictions and errors as POST /predict, lets the user pick the model of a server of several, and leaves a
screenshot for a person to look at."""

import re
import shutil
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import Select, WebDriverWait

from bigtransfer import BitConfig, BitForImageClassification
from bigtransfer.train.augment import eval_processor
from helpers import DESKTOP_WINDOW, TINY, ServeProcess, headless_chromium, screenshot_path

LABELS = ["tabby cat", "coffee", "rocket"]
MODEL_NAME = "photos"
PAGE_WAIT_S = 30
PHONE_WIDTH = 400


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """A tiny classifier with 64 px preprocessing, a cat photo and a text file."""
    from skimage import data

    folder = tmp_path_factory.mktemp("page")
    torch.manual_seed(0)
    config = BitConfig(**TINY, id2label=dict(enumerate(LABELS)), label2id={label: i for i, label in enumerate(LABELS)})
    BitForImageClassification(config).save_pretrained(folder / MODEL_NAME)
    eval_processor(64).save_pretrained(folder / MODEL_NAME)
    Image.fromarray(data.chelsea()).save(folder / "cat.jpg", quality=90)
    (folder / "notes.txt").write_text("not an image\n")
    return folder


@pytest.fixture(scope="module")
def server(files) -> str:
    """`bigtransfer serve` on a free port; its URL, once ready. SIGTERM at the end must exit 0."""
    running = ServeProcess(files / MODEL_NAME, files / "server.log")
    yield running.url
    code, log = running.stop()
    assert code == 0, f"SIGTERM should drain and exit 0, got {code}:\n{log}"


@pytest.fixture(scope="module")
def repository_server(files) -> str:
    """`bigtransfer serve REPO` of two models: the page's model and "sky", with other labels."""
    repository = files / "repository"
    shutil.copytree(files / MODEL_NAME, repository / MODEL_NAME)
    torch.manual_seed(1)
    BitForImageClassification(
        BitConfig(**{**TINY, "num_labels": 2}, id2label={0: "rocket", 1: "moon"})
    ).save_pretrained(repository / "sky")
    eval_processor(64).save_pretrained(repository / "sky")
    running = ServeProcess(repository, files / "repository.log")
    yield running.url
    code, log = running.stop()
    assert code == 0, f"SIGTERM should drain and exit 0, got {code}:\n{log}"


@pytest.fixture(scope="module")
def browser():
    with headless_chromium(DESKTOP_WINDOW) as driver:
        yield driver


def _opened(browser, server: str):
    """The page, freshly loaded, once it shows the model's name from /info."""
    browser.get(server)
    WebDriverWait(browser, PAGE_WAIT_S).until(expected_conditions.text_to_be_present_in_element(
        (By.ID, "model-name"), MODEL_NAME))  # fmt: skip
    return browser


@pytest.fixture
def page(browser, server):
    return _opened(browser, server)


@pytest.fixture
def phone_page(browser, server):
    """The page in a phone-wide window; the window is desktop-sized again afterwards."""
    browser.set_window_size(PHONE_WIDTH, DESKTOP_WINDOW[1])
    try:
        yield _opened(browser, server)
    finally:
        browser.set_window_size(*DESKTOP_WINDOW)


def _upload(page, path: Path, answered) -> None:
    """Choose `path` in the file input and wait until `answered(driver)`."""
    page.find_element(By.ID, "file").send_keys(str(path))
    WebDriverWait(page, PAGE_WAIT_S).until(answered)


def _predictions_shown(driver) -> bool:
    return driver.find_element(By.ID, "latency").text.startswith("server")


def _error_shown(driver) -> bool:
    return driver.find_element(By.ID, "error").is_displayed()


def test_page_shows_the_model_from_info(page):
    assert page.title == f"{MODEL_NAME} · bigtransfer"
    assert f"{len(LABELS)} labels" in page.find_element(By.ID, "model-source").text
    page.find_element(By.TAG_NAME, "summary").click()
    assert ", ".join(LABELS) in page.find_element(By.ID, "details").text


def test_page_names_the_resize_filter_and_gives_the_limits_with_units(page):
    page.find_element(By.TAG_NAME, "summary").click()
    details = page.find_element(By.ID, "details").text
    assert "resize: 64×64 px, bilinear" in details and "resample" not in details  # PIL's code 2, by its name
    assert "limits: batch ≤ 32 images, wait ≤ 5 ms, queue 256 images, body ≤ 20 MiB, timeout 30 s" in details


def test_page_fits_a_phone_wide_window_without_scrolling_sideways(phone_page, files):
    _upload(phone_page, files / "cat.jpg", _predictions_shown)
    phone_page.find_element(By.TAG_NAME, "summary").click()
    page_width, window_width = phone_page.execute_script(
        "return [document.documentElement.scrollWidth, window.innerWidth]"
    )
    assert window_width == PHONE_WIDTH and page_width <= window_width
    screenshot = screenshot_path(f"serve-page-{PHONE_WIDTH}px.png")
    assert phone_page.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 20_000, "the screenshot looks blank"


def test_file_input_is_reachable_by_keyboard(page):
    page.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
    assert page.switch_to.active_element.get_attribute("id") == "file"


def test_page_shows_the_predictions_of_the_api(page, server, files):
    _upload(page, files / "cat.jpg", _predictions_shown)
    expected = httpx.post(f"{server}/predict?top_k=5", content=(files / "cat.jpg").read_bytes(), timeout=30).json()
    rows = page.find_elements(By.CSS_SELECTOR, ".row.prediction")
    shown = [
        (row.find_element(By.CLASS_NAME, "label").text, row.find_element(By.CLASS_NAME, "score").text) for row in rows
    ]
    assert [label for label, _ in shown] == [entry["label"] for entry in expected["labels"]]
    assert [float(score) for _, score in shown] == pytest.approx([e["score"] for e in expected["labels"]], abs=1e-3)
    assert re.fullmatch(r"server \d+\.\d ms · round trip \d+\.\d ms", page.find_element(By.ID, "latency").text)
    assert page.find_element(By.ID, "preview").is_displayed()
    screenshot = screenshot_path("serve-page.png")
    assert page.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 20_000, "the screenshot looks blank"


def test_page_shows_the_server_error_for_a_non_image(page, server, files):
    _upload(page, files / "cat.jpg", _predictions_shown)
    _upload(page, files / "notes.txt", _error_shown)
    answer = httpx.post(f"{server}/predict", content=(files / "notes.txt").read_bytes(), timeout=30)
    assert answer.status_code == 400
    assert page.find_element(By.ID, "error").text == answer.json()["error"]
    assert not page.find_elements(By.CSS_SELECTOR, ".row.prediction"), "the cat's predictions are still shown"
    WebDriverWait(page, PAGE_WAIT_S).until_not(lambda driver: driver.find_element(By.ID, "preview").is_displayed())


def test_page_of_one_model_shows_no_model_picker(page):
    assert not page.find_element(By.ID, "model-picker").is_displayed()


def test_page_of_several_models_lets_the_user_pick_one_and_predicts_with_it(browser, repository_server, files):
    page = _opened(browser, repository_server)  # the first model of the index
    picker = Select(page.find_element(By.ID, "model-picker"))
    assert [option.text for option in picker.options] == [MODEL_NAME, "sky"]
    assert picker.first_selected_option.text == MODEL_NAME
    _upload(page, files / "cat.jpg", _predictions_shown)
    picker.select_by_visible_text("sky")
    WebDriverWait(page, PAGE_WAIT_S).until(expected_conditions.text_to_be_present_in_element((By.ID, "model-name"),
                                                                                           "sky"))  # fmt: skip
    assert page.title == "sky · bigtransfer" and "2 labels" in page.find_element(By.ID, "model-source").text
    assert not page.find_elements(By.CSS_SELECTOR, ".row.prediction"), "the other model's predictions are still shown"
    _upload(page, files / "cat.jpg", _predictions_shown)
    expected = httpx.post(f"{repository_server}/predict?model=sky&top_k=5", content=(files / "cat.jpg").read_bytes(),
                          timeout=30).json()  # fmt: skip
    shown = [
        row.find_element(By.CLASS_NAME, "label").text for row in page.find_elements(By.CSS_SELECTOR, ".row.prediction")
    ]
    assert shown == [entry["label"] for entry in expected["labels"]] and sorted(shown) == ["moon", "rocket"]
