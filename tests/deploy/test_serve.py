"""`covidnet serve` as a client meets it: a real server process on loopback, real HTTP, real files
(PNG, JPEG, DICOM written with pydicom) and the bad ones a service gets."""

import base64
import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from dicomfiles import dicom, save_dicom
from PIL import Image
from servefixtures import Server

from covidnet.predict import PredictConfig, predict_paths

AUTH = {"Authorization": "Bearer s3cret"}
PHI = ["Doe^Jane", "PID-4711-XYZ", "19470312", "20200402", "ACC-99173", "St Elsewhere General"]


@pytest.fixture(scope="module")
def files(trained, tmp_path_factory):
    root, _, _ = trained
    tmp = tmp_path_factory.mktemp("uploads")
    src = sorted((root / "phantoms" / "images").glob("*.png"))[0]
    arr = np.array(Image.open(src).convert("L"))
    out = {"png": tmp / "x.png", "jpeg": tmp / "x.jpg", "dicom": tmp / "x.dcm"}
    Image.fromarray(arr).save(out["png"])
    Image.fromarray(arr).save(out["jpeg"], quality=95)
    save_dicom(
        out["dicom"],
        dicom(
            arr,
            ViewPosition="PA",
            PatientName=PHI[0],
            PatientID=PHI[1],
            PatientBirthDate=PHI[2],
            StudyDate=PHI[3],
            AccessionNumber=PHI[4],
            InstitutionName=PHI[5],
        ),
    )
    out["empty"] = tmp / "empty.png"
    out["empty"].write_bytes(b"")
    out["text"] = tmp / "notes.png"
    out["text"].write_text("this is not an image\n" * 50)
    out["truncated"] = tmp / "cut.jpg"
    out["truncated"].write_bytes(out["jpeg"].read_bytes()[: out["jpeg"].stat().st_size // 2])
    out["bomb"] = tmp / "bomb.png"
    Image.new("1", (20000, 20000)).save(out["bomb"])  # 400 million pixels in a few kB
    out["big"] = tmp / "big.png"
    out["big"].write_bytes(b"\x89PNG\r\n\x1a\n" + np.random.default_rng(0).bytes(1_200_000))  # over the 1 MB limit
    out["lateral"] = tmp / "lat.dcm"
    save_dicom(out["lateral"], dicom(arr, ViewPosition="LL"))
    return out


def post(server, path: Path, query: str = "", headers=AUTH, field=True):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        if field:
            return c.post("/v1/predict" + query, files={"file": (path.name, path.read_bytes())}, headers=headers)
        return c.post(
            "/v1/predict" + query,
            content=path.read_bytes(),
            headers={**headers, "Content-Type": "application/octet-stream"},
        )


@pytest.mark.parametrize("kind", ["png", "jpeg", "dicom"])
def test_valid_images_get_the_predictions_of_covidnet_predict(server, trained, files, kind):
    _, _, ckpt = trained
    r = post(server, files[kind])
    assert r.status_code == 200, r.text
    body = r.json()
    (expected,) = predict_paths(
        PredictConfig([str(files[kind])], checkpoint=str(ckpt), device="cpu", threshold="COVID-19=0.5")
    )
    assert body["label"] == expected["label"]
    assert body["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-5)
    assert body["triage"]["flag"] == expected["triage"]["flag"] and body["triage"]["class"] == "COVID-19"
    assert (
        body["model_id"].startswith("covidnet-cxr3b@")
        and body["model_version"]
        and "not a diagnosis" in body["disclaimer"]
    )


def test_raw_body_upload_works_like_multipart(server, files):
    a, b = post(server, files["png"]), post(server, files["png"], field=False)
    assert b.status_code == 200 and b.json()["probabilities"] == a.json()["probabilities"]


def test_cam_and_preview_are_pngs_of_the_models_input_size(server, files):
    r = post(server, files["dicom"], "?cam=1&preview=1")
    assert r.status_code == 200, r.text
    for key in ("cam_png", "image_png"):
        img = Image.open(io.BytesIO(base64.b64decode(r.json()[key])))
        assert img.format == "PNG" and img.size == (48, 48)
    assert Image.open(io.BytesIO(base64.b64decode(r.json()["cam_png"]))).mode == "RGB"  # a coloured overlay


def test_no_dicom_header_field_is_echoed_or_logged(server, files):
    r = post(server, files["dicom"], "?cam=1")
    bad = post(server, files["dicom"].with_name("x.dcm"), headers={})  # an error path as well
    text = r.text + bad.text + server.logs()
    assert r.status_code == 200 and bad.status_code == 401
    for value in PHI:
        assert value not in text


@pytest.mark.parametrize(
    "name, status, code",
    [
        ("empty", 400, "empty_file"),
        ("text", 415, "unsupported_media_type"),
        ("truncated", 422, "unreadable_image"),
        ("bomb", 413, "image_too_large"),
        ("big", 413, "payload_too_large"),
        ("lateral", 422, "not_frontal"),
    ],
)
def test_bad_uploads_get_their_status_and_a_json_error_and_the_server_stays_up(server, files, name, status, code):
    r = post(server, files[name])
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["status"] == status and err["code"] == code and err["message"]
    assert r.headers["content-type"].startswith("application/json")
    assert server.alive()


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}])
def test_a_missing_or_wrong_token_is_401(server, files, headers):
    r = post(server, files["png"], headers=headers)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    with httpx.Client(base_url=server.url) as c:
        assert c.get("/v1/model", headers=headers).status_code == 401
        assert c.get("/healthz").status_code == 200  # liveness needs no token


def test_concurrent_requests_all_succeed_and_are_batched(server, files):
    before = httpx.get(server.url + "/healthz").json()["batches"]
    with ThreadPoolExecutor(16) as pool:
        rs = list(pool.map(lambda k: post(server, files["png" if k % 2 else "jpeg"]), range(32)))
    assert [r.status_code for r in rs] == [200] * 32
    after = httpx.get(server.url + "/healthz").json()["batches"]
    assert after["images"] - before["images"] == 32
    assert after["batches"] - before["batches"] < 32 and after["largest_batch"] > 1  # several requests shared a pass


def test_model_description_openapi_and_the_page(server):
    with httpx.Client(base_url=server.url, headers=AUTH) as c:
        m = c.get("/v1/model").json()
        assert m["classes"] == ["normal", "pneumonia", "COVID-19"] and m["input"]["stored_size"] == 48
        assert m["triage_rule"]["threshold"] == 0.5 and m["cam"] is True and m["token_required"] is True
        spec = c.get("/openapi.json").json()
        assert {"/v1/predict", "/v1/model", "/healthz"} <= set(spec["paths"])
        assert "multipart/form-data" in spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
        page = c.get("/")
        assert page.status_code == 200 and "Research tool, not a diagnosis" in page.text
        assert c.get("/nope").json()["error"]["status"] == 404
        assert (
            "access-control-allow-origin" not in c.get("/healthz", headers={"Origin": "https://evil.example"}).headers
        )


def test_onnx_service_predicts_like_the_checkpoint_and_refuses_heat_maps(trained, exported, files, tmp_path):
    s = Server(tmp_path, "--onnx", exported[0]["path"], "--max-batch", "1")
    try:
        with httpx.Client(base_url=s.url, timeout=60) as c:
            r = c.post("/v1/predict", files={"file": ("x.png", files["png"].read_bytes())})
            (expected,) = predict_paths(PredictConfig([str(files["png"])], checkpoint=str(trained[2]), device="cpu"))
            assert r.status_code == 200 and r.json()["runtime"] == "onnx"
            assert r.json()["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-4)
            r = c.post("/v1/predict?cam=1", files={"file": ("x.png", files["png"].read_bytes())})
            assert r.status_code == 400 and r.json()["error"]["code"] == "cam_unavailable"
    finally:
        s.close()


def test_a_full_queue_answers_503_and_a_slow_request_504(trained, files, tmp_path):
    _, _, ckpt = trained
    s = Server(tmp_path, "--checkpoint", str(ckpt), "--queue-size", "1", "--max-batch", "1")
    try:
        with ThreadPoolExecutor(12) as pool:
            rs = list(pool.map(lambda k: post(s, files["dicom"], "?cam=1", headers={}), range(12)))
        codes = {r.status_code for r in rs}
        assert codes <= {200, 503} and 503 in codes and 200 in codes
        busy = next(r for r in rs if r.status_code == 503)
        assert busy.json()["error"]["code"] == "busy" and busy.headers["retry-after"] == "1"
        assert s.alive()
    finally:
        s.close()
    s = Server(tmp_path, "--checkpoint", str(ckpt), "--timeout-s", "0.001")
    try:
        r = post(s, files["dicom"], "?cam=1", headers={})  # decoding, a forward pass and a heat map: far over 1 ms
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        assert s.alive()
    finally:
        s.close()


def test_uploads_are_written_only_when_asked(trained, files, tmp_path):
    _, _, ckpt = trained
    keep = tmp_path / "kept"
    keep.mkdir()
    s = Server(tmp_path, "--checkpoint", str(ckpt), "--keep-uploads", str(keep))
    try:
        r = post(s, files["dicom"], headers={})
        assert r.status_code == 200
        (saved,) = keep.iterdir()
        assert saved.name == f"{r.json()['request_id']}.dicom" and saved.read_bytes() == files["dicom"].read_bytes()
    finally:
        s.close()


def test_cors_is_on_only_for_the_origins_given(trained, tmp_path):
    s = Server(tmp_path, "--checkpoint", str(trained[2]), "--cors-origin", "https://lab.example")
    try:
        ok = httpx.get(s.url + "/healthz", headers={"Origin": "https://lab.example"})
        other = httpx.get(s.url + "/healthz", headers={"Origin": "https://evil.example"})
        assert ok.headers.get("access-control-allow-origin") == "https://lab.example"
        assert "access-control-allow-origin" not in other.headers
    finally:
        s.close()


def test_a_port_in_use_or_a_bad_option_is_one_line_and_exit_1(trained, tmp_path):
    import socket

    from test_cli import covidnet

    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        r = covidnet("serve", "--checkpoint", str(trained[2]), "--port", str(port))
    assert r.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in r.stderr and "Traceback" not in r.stderr
    for args, message in (
        (["--max-batch", "0"], "--max-batch must be >= 1"),
        (["--keep-uploads", str(tmp_path / "nope")], "folder not found"),
        (["--threshold", "flu=0.3"], "--threshold 'flu=0.3'"),
    ):
        r = covidnet("serve", "--checkpoint", str(trained[2]), "--port", "0", *args)
        assert r.returncode == 1 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = covidnet("serve", "--checkpoint", str(trained[2]), "--onnx", "m.onnx")
    assert r.returncode == 2 and "not allowed with argument" in r.stderr
