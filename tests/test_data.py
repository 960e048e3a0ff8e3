"""bench.data: DreamBench parsing on the real copy, user folders, image decoding edge cases, local download."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from bench import data
from bench.api import BenchError, Concept
from tests.helpers import PROMPTS, jpeg, tiny_dataset


def _git(*args: str, cwd: Path) -> None:
    command = ["git", "-c", "user.email=a@b", "-c", "user.name=n", *args]
    subprocess.run(command, cwd=cwd, check=True, capture_output=True)


# --- the real DreamBench copy ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def concepts(dreambench_root: Path) -> dict[str, Concept]:
    return {c.name: c for c in data.load_dreambench(dreambench_root)}


@pytest.mark.slow
def test_real_dreambench_counts(real_dreambench_root: Path) -> None:
    concepts = {c.name: c for c in data.load_dreambench(real_dreambench_root)}
    assert len(concepts) == 30
    assert list(concepts) == sorted(concepts)
    assert sum(len(c.images) for c in concepts.values()) == 158
    assert all(len(c.prompts) == 25 for c in concepts.values())
    assert sum(c.live for c in concepts.values()) == 9
    assert len({c.class_noun for c in concepts.values()}) == 15
    assert all(4 <= len(c.images) <= 6 and list(c.images) == sorted(c.images) for c in concepts.values())


def test_dreambench_counts(concepts: dict[str, Concept]) -> None:
    """What holds on the real DreamBench and on the mini fixture alike (the real counts: the slow test above)."""
    assert list(concepts) == sorted(concepts) and {"dog", "teapot", "cat", "can", "backpack"} <= set(concepts)
    assert all(len(c.prompts) == 25 for c in concepts.values())
    assert {c.name for c in concepts.values() if c.live} == {n for n in concepts if n.startswith(("dog", "cat"))}
    assert all(len(c.images) >= 3 and list(c.images) == sorted(c.images) for c in concepts.values())


def test_real_dreambench_classes_and_prompts(concepts: dict[str, Concept]) -> None:
    expected = {"dog": "dog", "bear_plushie": "stuffed animal", "pink_sunglasses": "glasses",
                "red_cartoon": "cartoon", "poop_emoji": "toy", "cat2": "cat", "teapot": "teapot", "can": "can"}
    assert {name: concepts[name].class_noun for name in expected if name in concepts} == {
        name: noun for name, noun in expected.items() if name in concepts}
    dog, teapot = concepts["dog"], concepts["teapot"]
    assert dog.live and not teapot.live
    assert "a {0} {1} wearing a red hat" in dog.prompts
    assert not any("wearing a red hat" in p for p in teapot.prompts)
    assert teapot.prompts[0] == "a {0} {1} in the jungle"
    assert teapot.prompts[-1] == "a cube shaped {0} {1}"
    assert dog.prompt(dog.prompts[0], "<new1>") == "a <new1> dog in the jungle"


def test_real_image_loads_resized(concepts: dict[str, Concept]) -> None:
    img = data.load_image(concepts["dog"].images[0], size=64)
    assert img.mode == "RGB" and img.size == (64, 64)


def test_select_concepts(dreambench_root: Path) -> None:
    assert [c.name for c in data.select_concepts(dreambench_root, "dog,teapot")] == ["dog", "teapot"]
    assert [c.name for c in data.select_concepts(dreambench_root, " teapot , dog,dog ")] == ["teapot", "dog"]
    every = data.select_concepts(dreambench_root, "all")  # 30 on DreamBench, 5 on the mini fixture
    assert [c.name for c in every] == sorted(p.name for p in data.find_dataset(dreambench_root).iterdir()
                                             if p.is_dir()) and len(every) >= 5
    with pytest.raises(BenchError, match="did you mean 'dog'"):
        data.select_concepts(dreambench_root, "dog,dgo")
    with pytest.raises(BenchError, match="no concepts"):
        data.select_concepts(dreambench_root, " , ")


def test_find_dataset_accepts_root_and_dataset_folder(dreambench_root: Path, tmp_path: Path) -> None:
    dataset = data.find_dataset(dreambench_root)
    assert (dataset / data.PROMPTS_FILE).is_file()
    assert data.find_dataset(dataset) == dataset
    with pytest.raises(BenchError, match="does not exist.*bench data download"):
        data.find_dataset(tmp_path / "nowhere")
    (tmp_path / "dataset" / "dog").mkdir(parents=True)
    with pytest.raises(BenchError, match=f"no {data.PROMPTS_FILE}.*BENCH_DATA"):
        data.find_dataset(tmp_path)


# --- parsing -----------------------------------------------------------------------------------------------


def test_parse_synthetic_file_with_crlf_and_spaces() -> None:
    text = "\r\n".join("   " + line + "  " for line in PROMPTS.splitlines())
    classes, objects, live = data.parse_prompts_and_classes(text)
    assert classes == {"dog": "dog", "teapot": "teapot", "red_cartoon": "cartoon"}
    assert objects == ["a {0} {1} in the jungle", "a red {0} {1}"]
    assert live[1] == "a {0} {1} wearing a red hat" and len(live) == 3


@pytest.mark.parametrize(
    "broken, message",
    [
        (PROMPTS.replace("subject_name,class", "name;class"), "subject_name,class"),
        (PROMPTS.replace("Live Subject Prompts", "Live"), "live subject prompts"),
        (PROMPTS.replace("'a red {0} {1}'", "'a red {0} {1}"), "Object Prompts"),
        (PROMPTS.replace("'a red {0} {1}'.format", "print"), "not a string"),
        (PROMPTS.replace("'a purple {0} {1}'", "'a purple {2}'"), "bad template"),
    ],
)
def test_parse_malformed(broken: str, message: str) -> None:
    with pytest.raises(BenchError, match=message):
        data.parse_prompts_and_classes(broken)


def test_a_malformed_class_line_is_an_error_with_its_line_number(tmp_path: Path) -> None:
    """`teapot teapot` (comma missing) used to end the block there, silently dropping the concepts after it."""
    root = tiny_dataset(tmp_path / "db")
    path = root / "dataset" / "prompts_and_classes.txt"
    lines = path.read_text().splitlines()
    number = next(i for i, line in enumerate(lines, 1) if line.strip() == "teapot,teapot")
    lines[number - 1] = "teapot teapot"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(BenchError, match=f"prompts_and_classes.txt: malformed .* line {number} 'teapot teapot'"):
        data.load_dreambench(root)


def test_missing_subject_folder_or_images(tmp_path: Path) -> None:
    root = tiny_dataset(tmp_path / "db")
    (root / "dataset" / "teapot" / "00.jpg").unlink()
    (root / "dataset" / "teapot" / "notes.txt").write_text("no images here")
    with pytest.raises(BenchError, match="no images.*teapot"):
        data.load_dreambench(root)
    shutil.rmtree(root / "dataset" / "teapot")
    with pytest.raises(BenchError, match="missing.*teapot"):
        data.load_dreambench(root)


# --- user concept folders ----------------------------------------------------------------------------------


def test_folder_concept_with_prompts_file(tmp_path: Path) -> None:
    folder = tmp_path / "my_mug"
    jpeg(folder / "b.PNG")
    jpeg(folder / "a.jpeg")
    (folder / ".hidden.jpg").write_bytes(b"")
    (folder / "readme.md").write_text("x")
    (folder / "prompts.txt").write_text("# my prompts\na {0} {1} on a desk\n\n  a {0} {1} in space  \n")
    concept = data.load_folder_concept(folder, "mug")
    assert concept.name == "my_mug" and concept.class_noun == "mug" and not concept.live
    assert [p.name for p in concept.images] == ["a.jpeg", "b.PNG"]
    assert concept.prompts == ("a {0} {1} on a desk", "a {0} {1} in space")
    assert data.check_folder(folder)["images"] == 2
    (folder / "prompts.txt").write_text("a {1} without identifier\n")
    with pytest.raises(BenchError, match=r"\{0\}"):
        data.load_folder_concept(folder, "mug")


def test_folder_concept_with_dreambench_prompts(tmp_path: Path, dreambench_root: Path) -> None:
    folder = tmp_path / "rex"
    jpeg(folder / "01.jpg")
    pet = data.load_folder_concept(folder, "dog", prompts_root=dreambench_root)
    assert pet.live and "a {0} {1} wearing a red hat" in pet.prompts and len(pet.prompts) == 25
    thing = data.load_folder_concept(folder, "robot", name="bot", prompts_root=dreambench_root)
    assert thing.name == "bot" and not thing.live and "a {0} {1} wearing a red hat" not in thing.prompts
    assert data.load_folder_concept(folder, "robot", live=True, prompts_root=dreambench_root).live
    with pytest.raises(BenchError, match="prompts.txt"):
        data.load_folder_concept(folder, "dog")


def test_folder_concept_without_images(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(BenchError, match="no images.*empty"):
        data.load_folder_concept(tmp_path / "empty", "dog")
    with pytest.raises(BenchError, match="no images"):
        data.check_folder(tmp_path / "empty")


# --- image decoding ----------------------------------------------------------------------------------------


def test_bad_images_are_bench_errors(tmp_path: Path, dreambench_root: Path) -> None:
    real = data.find_dataset(dreambench_root) / "dog" / "00.jpg"
    half = tmp_path / "half.jpg"
    half.write_bytes(real.read_bytes()[: real.stat().st_size // 2])
    zero = tmp_path / "zero.jpg"
    zero.write_bytes(b"")
    text = tmp_path / "text.png"
    text.write_text("not an image")
    corrupt = tmp_path / "corrupt.png"
    good = tmp_path / "good.png"
    Image.new("RGB", (16, 16)).save(good)
    corrupt.write_bytes(good.read_bytes()[:40] + b"\x00" * 200)
    for path in (half, zero, text, corrupt, tmp_path / "absent.jpg"):
        with pytest.raises(BenchError, match=f"cannot read image {re.escape(str(path))}: .+"):
            data.load_image(path)
    with pytest.raises(BenchError, match="zero.jpg: empty file"):
        data.load_image(zero)
    with pytest.raises(BenchError, match="half.jpg: .*truncated"):
        data.load_image(half)
    with pytest.raises(BenchError, match="cannot read image .*corrupt.png"):  # the first bad file, sorted
        data.check_folder(tmp_path)


def test_truncated_stays_an_error_when_pil_is_lenient(tmp_path: Path, dreambench_root: Path) -> None:
    from PIL import ImageFile

    real = data.find_dataset(dreambench_root) / "teapot" / "00.jpg"
    half = tmp_path / "half.jpg"
    half.write_bytes(real.read_bytes()[: real.stat().st_size // 2])
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        with pytest.raises(BenchError, match="half.jpg"):
            data.load_image(half)
        assert ImageFile.LOAD_TRUNCATED_IMAGES is True
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False


def test_color_modes_become_rgb(tmp_path: Path) -> None:
    import numpy as np

    def roundtrip(img: Image.Image, name: str) -> np.ndarray:
        img.save(tmp_path / name)
        out = data.load_image(tmp_path / name)
        assert out.mode == "RGB" and out.size == img.size
        return np.asarray(out)

    gray = roundtrip(Image.new("L", (8, 6), 100), "gray.png")
    assert (gray == 100).all()
    rgba = Image.new("RGBA", (8, 6), (255, 0, 0, 255))
    rgba.putpixel((0, 0), (0, 0, 255, 0))  # fully transparent: white, not blue or black
    pixels = roundtrip(rgba, "rgba.png")
    assert tuple(pixels[0, 0]) == (255, 255, 255) and tuple(pixels[5, 7]) == (255, 0, 0)
    cmyk = roundtrip(Image.new("CMYK", (8, 6), (0, 255, 255, 0)), "cmyk.jpg")
    assert cmyk[..., 0].min() > 200 and cmyk[..., 1:].max() < 60
    green = Image.new("RGB", (8, 6), (0, 128, 0))
    palette = roundtrip(green.convert("P", palette=Image.Palette.ADAPTIVE), "palette.png")
    assert tuple(palette[0, 0]) == (0, 128, 0)
    sixteen = Image.fromarray(np.array([[0, 65535], [32768, 1000]], dtype=np.uint16))
    wide = roundtrip(sixteen, "sixteen.png")[..., 0]
    assert wide.tolist() == [[0, 255], [127, 3]]  # scaled, not clipped to 255


def test_exif_orientation_and_resize(tmp_path: Path) -> None:
    img = Image.new("RGB", (40, 20), (10, 200, 10))
    img.paste((250, 10, 10), (0, 0, 20, 20))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    img.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    upright = data.load_image(tmp_path / "rotated.jpg")
    assert upright.size == (20, 40)
    assert upright.getpixel((10, 5))[0] > 200  # red half is now on top
    square = data.load_image(tmp_path / "rotated.jpg", size=8)
    assert square.size == (8, 8) and square.mode == "RGB"
    with pytest.raises(BenchError, match="size"):
        data.load_image(tmp_path / "rotated.jpg", size=0)


# --- check and download ------------------------------------------------------------------------------------


def test_check_dataset_synthetic(tmp_path: Path) -> None:
    root = tiny_dataset(tmp_path / "db")
    summary = data.check_dataset(root)
    assert summary == {"root": str(root / "dataset"), "concepts": 3, "images": 3, "live": 1, "classes": 3,
                       "object_prompts": 2, "live_prompts": 3}
    (root / "dataset" / "teapot" / "01.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(BenchError, match="cannot read image .*teapot.01.jpg"):
        data.check_dataset(root)


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    repo = tiny_dataset(tmp_path / "origin")
    _git("init", "-q", cwd=repo)
    _git("add", ".", cwd=repo)
    _git("commit", "-q", "-m", "data", cwd=repo)
    return repo


def test_download_from_local_repository(origin: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out" / "dreambench"
    assert data.download_dreambench(dest, origin.as_uri()) == dest
    assert data.check_dataset(dest)["concepts"] == 3
    assert not dest.with_name("dreambench.partial").exists()
    marker = dest / "dataset" / "dog" / "00.jpg"
    before = marker.stat().st_mtime_ns
    assert data.download_dreambench(dest, "file:///nowhere/at/all") == dest  # valid already: no clone
    assert marker.stat().st_mtime_ns == before
    empty = tmp_path / "empty"
    empty.mkdir()
    assert data.download_dreambench(empty, origin.as_uri()) == empty


def test_download_failures(origin: Path, tmp_path: Path) -> None:
    dest = tmp_path / "db"
    with pytest.raises(BenchError, match="git clone .* failed: fatal: .+"):
        data.download_dreambench(dest, (tmp_path / "no-such-repo").as_uri())
    assert not dest.exists() and not dest.with_name("db.partial").exists()

    (origin / "dataset" / "dog" / "00.jpg").unlink()
    _git("commit", "-q", "-am", "break", cwd=origin)
    with pytest.raises(BenchError, match="not hold a valid DreamBench.*dog"):
        data.download_dreambench(dest, origin.as_uri())
    assert not dest.exists() and not dest.with_name("db.partial").exists()

    clutter = tmp_path / "clutter"
    clutter.mkdir()
    (clutter / "x.txt").write_text("mine")
    with pytest.raises(BenchError, match="not empty"):
        data.download_dreambench(clutter, origin.as_uri())
    assert (clutter / "x.txt").read_text() == "mine"


def test_prompt_file_errors_name_the_files_line() -> None:
    """A syntax error or a bad element in a prompt section names its line in the file, not in the section."""
    from bench.api import BenchError
    from bench.data import parse_prompts_and_classes

    text = (Path(__file__).parent / "fixtures" / "dreambench-mini" / "dataset" / "prompts_and_classes.txt").read_text()
    lines = text.split("\n")
    target = next(i for i, line in enumerate(lines) if line.startswith("'a {0} {1} in the snow'")
                  and i > next(k for k, x in enumerate(lines) if x.strip().lower() == "live subject prompts"))
    broken = lines.copy()
    broken[target] = "'a {0} {1} in the snow.format(unique_token, class_token),"  # unterminated string
    with pytest.raises(BenchError, match=rf"Live Subject Prompts.*at line {target + 1} of the file"):
        parse_prompts_and_classes("\n".join(broken))
    odd = lines.copy()
    odd[target] = "42,"
    with pytest.raises(BenchError, match=rf"Live Subject Prompts\): line {target + 1}: element is not a string"):
        parse_prompts_and_classes("\n".join(odd))
