from cdpd.ingest.settings import settings_document


def test_points_analytics_js_at_this_daemon() -> None:
    doc = settings_document("wk_web", "https://cdp.example.com/collect/")
    segment = doc["integrations"]["Segment.io"]
    assert segment["apiKey"] == "wk_web"
    assert segment["apiHost"] == "cdp.example.com/collect/v1"
    assert segment["protocol"] == "https"
    assert list(doc["integrations"]) == ["Segment.io"]
    assert doc["metrics"]["sampleRate"] == 0
    assert doc["remotePlugins"] == []
