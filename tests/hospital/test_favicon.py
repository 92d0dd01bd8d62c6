"""Every page names an icon that exists, and the path browsers ask for without one answers too
(it was a 404 on every page)."""

from __future__ import annotations

import re

from flask.testing import FlaskClient


def test_pages_name_an_icon_that_is_served(client: FlaskClient) -> None:
    page = client.get("/login").get_data(as_text=True)
    [href] = re.findall(r'<link rel="icon" href="([^"]+)"', page)
    icon = client.get(href)
    assert icon.status_code == 200 and icon.mimetype == "image/svg+xml"
    assert b"<svg" in icon.data


def test_the_conventional_favicon_path_answers(client: FlaskClient) -> None:
    response = client.get("/favicon.ico")
    assert response.status_code in (200, 301, 302, 308)
    if response.status_code != 200:
        assert client.get(response.headers["Location"]).status_code == 200
