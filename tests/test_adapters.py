"""`merchant-fl-convert`: tiny files in each public format, converted and checked exactly, then read
back by the project's own validation."""

import gzip
import json

import pandas as pd
import pytest

from data.schema import validate_interactions
from launch.convert import main as convert


def converted(tmp_path, *args, out="out.parquet"):
    target = tmp_path / out
    assert convert([*map(str, args), str(target)]) == 0
    table = pd.read_csv(target, dtype=str, keep_default_na=False) if out.endswith(".csv") else pd.read_parquet(target)
    validate_interactions(table, str(target))  # every output is a valid interactions table
    return table


def expect(table, **columns):
    pd.testing.assert_frame_equal(table.reset_index(drop=True), pd.DataFrame(columns), check_dtype=False)


# --- MovieLens --------------------------------------------------------------------------------------

def test_movielens_u_data_with_genres_from_u_item(tmp_path):
    (tmp_path / "u.data").write_text("196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t242\t1\t878887116\n")
    flags = ["0"] * 19
    comedy, thriller = flags.copy(), flags.copy()
    comedy[5], thriller[16] = "1", "1"
    (tmp_path / "u.item").write_bytes(
        ("242|Kolya (1996)|24-Jan-1997||http://x|" + "|".join(comedy) + "\n"
         "302|L.A. Confidential (1997)|01-Jan-1997||http://y|" + "|".join(thriller) + "\n").encode("latin-1"))
    table = converted(tmp_path, "movielens", tmp_path / "u.data", "--movies", tmp_path / "u.item")
    expect(table, merchant_id=["Comedy", "Thriller", "Comedy"], user_id=[196, 186, 22], item_id=[242, 302, 242],
           timestamp=[881250949, 891717742, 878887116], rating=[3.0, 3.0, 1.0])


def test_movielens_converts_chunk_by_chunk_to_the_same_table(tmp_path, monkeypatch):
    from data.adapters import movielens
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" +
                                          "".join(f"{u},{u % 3},{1 + u % 5}.0,{1000 + u}\n" for u in range(7)))
    whole = converted(tmp_path, "movielens", tmp_path / "ratings.csv", out="whole.parquet")
    monkeypatch.setattr(movielens, "CHUNK_ROWS", 2)
    chunked = converted(tmp_path, "movielens", tmp_path / "ratings.csv", out="chunked.parquet")
    pd.testing.assert_frame_equal(whole, chunked)
    chunked_csv = converted(tmp_path, "movielens", tmp_path / "ratings.csv", out="chunked.csv")
    assert chunked_csv["user_id"].tolist() == [str(u) for u in range(7)] and len(chunked_csv.columns) == 5


def test_movielens_ratings_dat_with_movies_dat(tmp_path):
    (tmp_path / "ratings.dat").write_text("1::1193::5::978300760\n1::661::3::978302109\n")
    (tmp_path / "movies.dat").write_bytes("1193::One Flew (1975)::Drama\n661::James (1996)::Animation|Children's\n"
                                          .encode("latin-1"))
    table = converted(tmp_path, "movielens", tmp_path / "ratings.dat", "--movies", tmp_path / "movies.dat")
    expect(table, merchant_id=["Drama", "Animation"], user_id=[1, 1], item_id=[1193, 661],
           timestamp=[978300760, 978302109], rating=[5.0, 3.0])


def test_movielens_ratings_csv_without_movies_is_one_merchant(tmp_path):
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.5,964981247\n")
    table = converted(tmp_path, "movielens", tmp_path / "ratings.csv", "--merchant", "ml", out="out.csv")
    expect(table, merchant_id=["ml", "ml"], user_id=["1", "1"], item_id=["1", "3"],
           timestamp=["964982703", "964981247"], rating=["4", "4.5"])


def test_movielens_movie_without_genre_entry_is_an_error(tmp_path, capsys):
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,9,4.0,1\n")
    (tmp_path / "movies.csv").write_text("movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n")
    assert convert(["movielens", str(tmp_path / "ratings.csv"), str(tmp_path / "o.parquet"),
                    "--movies", str(tmp_path / "movies.csv")]) == 2
    assert "movie 9 of the ratings is not listed" in capsys.readouterr().err
    assert not (tmp_path / "o.parquet").exists()


# --- Amazon -----------------------------------------------------------------------------------------

def test_amazon_2018_gzip_with_brand_from_metadata(tmp_path):
    reviews = [{"overall": 5.0, "verified": True, "reviewerID": "A1", "asin": "B01", "unixReviewTime": 1500000000},
               {"overall": 2.0, "verified": False, "reviewerID": "A2", "asin": "B02", "unixReviewTime": 1500000100},
               {"overall": 4.0, "reviewerID": "A1", "asin": "B03", "unixReviewTime": 1500000200}]
    with gzip.open(tmp_path / "Toys_5.json.gz", "wt") as f:
        f.write("\n".join(json.dumps(r) for r in reviews) + "\n")
    (tmp_path / "meta.json").write_text("\n".join(json.dumps(m) for m in [
        {"asin": "B01", "brand": "Lego"}, {"asin": "B02", "brand": ""}, {"asin": "B03", "brand": "Lego"}]))
    table = converted(tmp_path, "amazon", tmp_path / "Toys_5.json.gz", "--merchant-field", "brand",
                      "--meta", tmp_path / "meta.json")
    expect(table, merchant_id=["Lego", "unknown", "Lego"], user_id=["A1", "A2", "A1"], item_id=["B01", "B02", "B03"],
           timestamp=[1500000000, 1500000100, 1500000200], rating=[5.0, 2.0, 4.0],
           purchase=pd.array([1, 0, None], dtype="Int8"))


def test_amazon_2023_plain_files_are_one_merchant_each(tmp_path):
    for name, user in (("Books.jsonl", "U1"), ("Beauty.jsonl", "U2")):
        (tmp_path / name).write_text(json.dumps({"rating": 3.0, "verified_purchase": True, "user_id": user,
                                                 "asin": "X", "timestamp": 1588687728923}) + "\n")
    table = converted(tmp_path, "amazon", tmp_path / "Books.jsonl", tmp_path / "Beauty.jsonl")
    expect(table, merchant_id=["Books", "Beauty"], user_id=["U1", "U2"], item_id=["X", "X"],
           timestamp=[1588687728, 1588687728], rating=[3.0, 3.0], purchase=[1, 1])


# --- Taobao -----------------------------------------------------------------------------------------

def test_taobao_events_become_one_row_per_user_item_pair(tmp_path):
    (tmp_path / "UserBehavior.csv").write_text(
        "1,10,7,pv,100\n1,10,7,buy,160\n1,11,8,cart,120\n2,10,7,pv,90\n2,10,7,fav,95\n1,11,8,pv,130\n")
    table = converted(tmp_path, "taobao", tmp_path / "UserBehavior.csv")
    expect(table, merchant_id=[7, 8, 7], user_id=[1, 1, 2], item_id=[10, 11, 10], timestamp=[100, 120, 90],
           purchase=[1, 0, 0], click=[1, 1, 1])


def test_taobao_unknown_behavior_names_its_row(tmp_path, capsys):
    (tmp_path / "UserBehavior.csv").write_text("1,10,7,pv,100\n1,10,7,like,160\n")
    assert convert(["taobao", str(tmp_path / "UserBehavior.csv"), str(tmp_path / "o.parquet")]) == 2
    assert "behavior 'like' at row 2 is not one of pv, cart, fav, buy" in capsys.readouterr().err


# --- Ali-CCP ----------------------------------------------------------------------------------------

def features(*pairs):
    return "\x01".join(f"{field}\x02{value}\x031.0" for field, value in pairs)


def test_aliccp_joins_common_features_and_keeps_single_valued_fields(tmp_path):
    (tmp_path / "common.csv").write_text(
        f"k1,3,{features(('101', 'u1'), ('121', 'p9'), ('109_14', 'a'), ('109_14', 'b'))}\n"
        f"k2,2,{features(('101', 'u2'), ('121', 'p8'))}\n")
    (tmp_path / "skeleton.csv").write_text(
        f"1,1,0,k1,3,{features(('205', 'i1'), ('206', 'c1'), ('207', 's1'))}\n"
        f"2,1,1,k2,3,{features(('205', 'i2'), ('206', 'c1'), ('207', 's2'))}\n"
        f"3,0,0,k1,3,{features(('205', 'i1'), ('206', 'c1'), ('207', 's1'))}\n")
    table = converted(tmp_path, "aliccp", tmp_path / "skeleton.csv", "--common", tmp_path / "common.csv")
    expect(table, merchant_id=["s1", "s2", "s1"], user_id=["u1", "u2", "u1"], item_id=["i1", "i2", "i1"],
           purchase=[0, 1, 0], click=[1, 1, 0], f121=["p9", "p8", "p9"], f206=["c1", "c1", "c1"])


# --- AliExpress -------------------------------------------------------------------------------------

def test_aliexpress_country_files_make_country_merchants(tmp_path, capsys):
    for country, rows in (("NL", ["s1,3,a,0.5,1,0", "s1,4,b,0.25,0,0"]), ("ES", ["s9,3,a,1.5,1,1"])):
        folder = tmp_path / f"AliExpress_{country}"
        folder.mkdir()
        (folder / "train.csv").write_text("search_id,categorical_1,categorical_2,numerical_1,click,conversion\n"
                                          + "\n".join(rows) + "\n")
    table = converted(tmp_path, "aliexpress", tmp_path / "AliExpress_NL/train.csv", tmp_path / "AliExpress_ES/train.csv",
                      "--categorical", "2")
    expect(table, merchant_id=["NL", "NL", "ES"], user_id=["s1", "s1", "s9"], item_id=["-", "-", "-"],
           purchase=[0, 0, 1], click=[1, 0, 1], categorical_1=["3", "4", "3"], categorical_2=["a", "b", "a"],
           numerical_1=[0.5, 0.25, 1.5])
    assert "data.features.categorical=[categorical_1,categorical_2] data.features.numerical=[numerical_1]" \
        in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["taobao", "missing.csv", "o.parquet"], "no such file"),
    (["movielens", "x.txt", "o.json"], "the output must end in .csv or .parquet"),
])
def test_bad_input_is_one_line(tmp_path, capsys, args, message):
    (tmp_path / "x.txt").write_text("userId,movieId,rating,timestamp\n1,1,4,1\n")
    assert convert([str(tmp_path / a) if "." in a else a for a in args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("merchant-fl: error: ") and message in err and err.count("\n") == 1
