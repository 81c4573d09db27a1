#!/usr/bin/env python3
"""Loads a running host's dashboard in headless Chromium (Debian's chromium and
chromedriver, through selenium), checks what it shows against what the caller knows, waits
for htmx to refresh the live part, and saves a screenshot. Prints what it read as JSON;
exits 1 if anything differs.

    python scripts/dashboard-check.py --url http://127.0.0.1:9401/ --key HEX \
        [--active N] [--min-deals N] [--min-chunks N] [--min-proven N] [--min-earned N]
        [--screenshot FILE]

(scripts/browser.sh installs the python with selenium, and the browser.)
"""

import argparse
import json
import sys
import tempfile
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--active", type=int, help="active deals the page must show")
    ap.add_argument("--min-deals", type=int, help="deal rows the page must show at least")
    ap.add_argument("--min-chunks", type=int, default=0)
    ap.add_argument("--min-proven", type=int, default=0)
    ap.add_argument("--min-earned", type=int, default=0)
    ap.add_argument("--screenshot")
    a = ap.parse_args()
    o = webdriver.ChromeOptions()
    o.binary_location = "/usr/bin/chromium"
    for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1200,1150", f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}"]:
        o.add_argument(flag)
    d = webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=o)
    seen = {}
    STALE = "the live part was swapped while it was read"

    def read():
        """What the page shows now, and what differs from what is expected; a read that
        htmx's swap of the live part overtook is one more thing to read again."""
        try:
            return read_page()
        except StaleElementReferenceException:
            return [STALE]

    def read_page():
        text = lambda css: d.find_element(By.CSS_SELECTOR, css).text.strip()
        bad = []
        seen["title"] = d.title
        seen["key"] = text("#host-key")
        seen["alerts"] = text("#alerts")
        seen["storage"] = text("#storage")
        seen["uptime"] = text("#live .since")
        seen["chunks"] = int(text("#chunks"))
        seen["charts"] = len(d.find_elements(By.CSS_SELECTOR, "svg.chart"))
        if seen["key"] != a.key:
            bad.append(f"key {seen['key']} shown, {a.key} expected")
        if seen["chunks"] < a.min_chunks:
            bad.append(f"{seen['chunks']} chunks shown, at least {a.min_chunks} expected")
        # Storage and traffic; with the chain's figures, earnings too.
        if seen["charts"] != (3 if d.find_elements(By.CSS_SELECTOR, "#deals-active") else 2):
            bad.append(f"{seen['charts']} charts")
        if a.active is not None or a.min_deals is not None:
            if not d.find_elements(By.CSS_SELECTOR, "#deals-active"):
                return bad + ["no chain figures yet"]
            seen["active"] = int(text("#deals-active"))
            seen["proven"] = int(text("#proven"))
            seen["earned"] = int(text("#earned"))
            seen["rating"] = int(text("#rating"))
            seen["deals"] = len(d.find_elements(By.CSS_SELECTOR, "table.deals tr")) - 1
            if a.active is not None and seen["active"] != a.active:
                bad.append(f"{seen['active']} active deals shown, {a.active} expected")
            if seen["proven"] < a.min_proven:
                bad.append(f"{seen['proven']} proven periods shown, at least {a.min_proven} expected")
            if seen["earned"] < a.min_earned:
                bad.append(f"{seen['earned']} MASPC earned shown, at least {a.min_earned} expected")
            if seen["deals"] < (a.min_deals or a.active or 0):
                bad.append(f"{seen['deals']} deal rows")
        return bad

    try:
        d.get(a.url)
        first = d.find_element(By.CSS_SELECTOR, "#live .since").text
        # What the host has not read from the chain yet shows up on a later refresh: htmx
        # replaces the live part every 5 s (the uptime line changes with it).
        deadline = time.monotonic() + 40
        while True:
            bad = read()
            if not bad or time.monotonic() > deadline:
                break
            time.sleep(0.25)
        if a.screenshot:
            d.save_screenshot(a.screenshot)
        while not bad and seen["uptime"] == first:
            if time.monotonic() > deadline:
                bad.append("the live part was not refreshed in 40 s")
                break
            time.sleep(0.25)
            bad = read()
            if bad == [STALE]:
                bad = []
    finally:
        d.quit()
    print(json.dumps(seen))
    for b in bad:
        print("BAD:", b, file=sys.stderr)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
