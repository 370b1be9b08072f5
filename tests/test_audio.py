"""Audio helpers: streaming resampling loses and duplicates nothing; G.711 matches the reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audiosocket_ai import audio

RATES = [8000, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 96000, 192000]


def chirp(rate: int, ms: int = 300) -> bytes:
    t = np.arange(rate * ms // 1000) / rate
    return (np.sin(2 * np.pi * (200 + 1500 * t) * t) * 12000).astype("<i2").tobytes()


def streamed(pcm: bytes, cuts: list[int], in_rate: int, out_rate: int) -> bytes:
    resampler = audio.Resampler(in_rate, out_rate)
    out, previous = [], 0
    for cut in [*sorted(cuts), len(pcm)]:
        out.append(resampler.process(pcm[previous:cut]))
        previous = cut
    out.append(resampler.flush())
    return b"".join(out)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(RATES), st.sampled_from(RATES), st.data())
def test_chunked_resampling_equals_one_shot(in_rate: int, out_rate: int, data: st.DataObject) -> None:
    pcm = chirp(in_rate)
    cuts = data.draw(st.lists(st.integers(0, len(pcm)), max_size=25))  # odd offsets included
    whole = streamed(pcm, [], in_rate, out_rate)
    pieces = streamed(pcm, cuts, in_rate, out_rate)
    assert len(pieces) == len(whole), "no sample lost or duplicated at chunk boundaries"
    a, b = np.frombuffer(pieces, "<i2").astype(int), np.frombuffer(whole, "<i2").astype(int)
    assert np.abs(a - b).max() <= 1
    expected = len(pcm) // 2 * out_rate / in_rate
    assert abs(len(whole) // 2 - expected) <= 2


def test_resampling_keeps_the_tone() -> None:
    tone = (np.sin(2 * np.pi * 440 * np.arange(8000) / 8000) * 10000).astype("<i2").tobytes()
    up = np.frombuffer(audio.resample(tone, 8000, 16000), "<i2").astype(float)
    spectrum = np.abs(np.fft.rfft(up[1000:15000]))
    assert abs(np.argmax(spectrum) * 16000 / 14000 - 440) < 2


def test_same_rate_is_a_passthrough() -> None:
    pcm = chirp(8000)
    assert audio.Resampler(8000, 8000).process(pcm) == pcm
    assert audio.resample(pcm, 16000, 16000) == pcm


# --- G.711 reference vectors ---------------------------------------------------------------
# Generated once with CPython 3.11's audioop (lin2ulaw/ulaw2lin, lin2alaw/alaw2lin: the
# ITU-T G.711 reference algorithm, after Sun's g711.c), then pasted here so the
# check never depends on audioop, which Python 3.13 removed. Encoding is a step function
# of the sample, so it is given exactly, for all 65,536 samples, as runs: the samples from
# one run start up to the next start (or 32767) all encode to that run's code.
# test_the_pasted_reference_is_g711 guards the constants: it re-derives the μ-law decode
# table from G.711's formula and checks every encode run against the decode tables.

ULAW_DECODE = (  # μ-law code → sample, codes 0x00 to 0xff in order
    -32124, -31100, -30076, -29052, -28028, -27004, -25980, -24956,  # 0x00
    -23932, -22908, -21884, -20860, -19836, -18812, -17788, -16764,  # 0x08
    -15996, -15484, -14972, -14460, -13948, -13436, -12924, -12412,  # 0x10
    -11900, -11388, -10876, -10364,  -9852,  -9340,  -8828,  -8316,  # 0x18
     -7932,  -7676,  -7420,  -7164,  -6908,  -6652,  -6396,  -6140,  # 0x20
     -5884,  -5628,  -5372,  -5116,  -4860,  -4604,  -4348,  -4092,  # 0x28
     -3900,  -3772,  -3644,  -3516,  -3388,  -3260,  -3132,  -3004,  # 0x30
     -2876,  -2748,  -2620,  -2492,  -2364,  -2236,  -2108,  -1980,  # 0x38
     -1884,  -1820,  -1756,  -1692,  -1628,  -1564,  -1500,  -1436,  # 0x40
     -1372,  -1308,  -1244,  -1180,  -1116,  -1052,   -988,   -924,  # 0x48
      -876,   -844,   -812,   -780,   -748,   -716,   -684,   -652,  # 0x50
      -620,   -588,   -556,   -524,   -492,   -460,   -428,   -396,  # 0x58
      -372,   -356,   -340,   -324,   -308,   -292,   -276,   -260,  # 0x60
      -244,   -228,   -212,   -196,   -180,   -164,   -148,   -132,  # 0x68
      -120,   -112,   -104,    -96,    -88,    -80,    -72,    -64,  # 0x70
       -56,    -48,    -40,    -32,    -24,    -16,     -8,      0,  # 0x78
     32124,  31100,  30076,  29052,  28028,  27004,  25980,  24956,  # 0x80
     23932,  22908,  21884,  20860,  19836,  18812,  17788,  16764,  # 0x88
     15996,  15484,  14972,  14460,  13948,  13436,  12924,  12412,  # 0x90
     11900,  11388,  10876,  10364,   9852,   9340,   8828,   8316,  # 0x98
      7932,   7676,   7420,   7164,   6908,   6652,   6396,   6140,  # 0xa0
      5884,   5628,   5372,   5116,   4860,   4604,   4348,   4092,  # 0xa8
      3900,   3772,   3644,   3516,   3388,   3260,   3132,   3004,  # 0xb0
      2876,   2748,   2620,   2492,   2364,   2236,   2108,   1980,  # 0xb8
      1884,   1820,   1756,   1692,   1628,   1564,   1500,   1436,  # 0xc0
      1372,   1308,   1244,   1180,   1116,   1052,    988,    924,  # 0xc8
       876,    844,    812,    780,    748,    716,    684,    652,  # 0xd0
       620,    588,    556,    524,    492,    460,    428,    396,  # 0xd8
       372,    356,    340,    324,    308,    292,    276,    260,  # 0xe0
       244,    228,    212,    196,    180,    164,    148,    132,  # 0xe8
       120,    112,    104,     96,     88,     80,     72,     64,  # 0xf0
        56,     48,     40,     32,     24,     16,      8,      0,  # 0xf8
)
ULAW_ENCODE_RUN_STARTS = (  # the lowest sample of each run of samples that encode alike, ascending
    -32768, -31608, -30584, -29560, -28536, -27512, -26488, -25464, -24440, -23416, -22392, -21368,
    -20344, -19320, -18296, -17272, -16248, -15736, -15224, -14712, -14200, -13688, -13176, -12664,
    -12152, -11640, -11128, -10616, -10104,  -9592,  -9080,  -8568,  -8056,  -7800,  -7544,  -7288,
     -7032,  -6776,  -6520,  -6264,  -6008,  -5752,  -5496,  -5240,  -4984,  -4728,  -4472,  -4216,
     -3960,  -3832,  -3704,  -3576,  -3448,  -3320,  -3192,  -3064,  -2936,  -2808,  -2680,  -2552,
     -2424,  -2296,  -2168,  -2040,  -1912,  -1848,  -1784,  -1720,  -1656,  -1592,  -1528,  -1464,
     -1400,  -1336,  -1272,  -1208,  -1144,  -1080,  -1016,   -952,   -888,   -856,   -824,   -792,
      -760,   -728,   -696,   -664,   -632,   -600,   -568,   -536,   -504,   -472,   -440,   -408,
      -376,   -360,   -344,   -328,   -312,   -296,   -280,   -264,   -248,   -232,   -216,   -200,
      -184,   -168,   -152,   -136,   -120,   -112,   -104,    -96,    -88,    -80,    -72,    -64,
       -56,    -48,    -40,    -32,    -24,    -16,     -8,      0,      4,     12,     20,     28,
        36,     44,     52,     60,     68,     76,     84,     92,    100,    108,    116,    124,
       140,    156,    172,    188,    204,    220,    236,    252,    268,    284,    300,    316,
       332,    348,    364,    380,    412,    444,    476,    508,    540,    572,    604,    636,
       668,    700,    732,    764,    796,    828,    860,    892,    956,   1020,   1084,   1148,
      1212,   1276,   1340,   1404,   1468,   1532,   1596,   1660,   1724,   1788,   1852,   1916,
      2044,   2172,   2300,   2428,   2556,   2684,   2812,   2940,   3068,   3196,   3324,   3452,
      3580,   3708,   3836,   3964,   4220,   4476,   4732,   4988,   5244,   5500,   5756,   6012,
      6268,   6524,   6780,   7036,   7292,   7548,   7804,   8060,   8572,   9084,   9596,  10108,
     10620,  11132,  11644,  12156,  12668,  13180,  13692,  14204,  14716,  15228,  15740,  16252,
     17276,  18300,  19324,  20348,  21372,  22396,  23420,  24444,  25468,  26492,  27516,  28540,
     29564,  30588,  31612,
)
ULAW_ENCODE_RUN_CODES = bytes.fromhex(  # the code of each run above
    "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
    "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f"
    "404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f"
    "606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7eff"
    "fefdfcfbfaf9f8f7f6f5f4f3f2f1f0efeeedecebeae9e8e7e6e5e4e3e2e1e0df"
    "dedddcdbdad9d8d7d6d5d4d3d2d1d0cfcecdcccbcac9c8c7c6c5c4c3c2c1c0bf"
    "bebdbcbbbab9b8b7b6b5b4b3b2b1b0afaeadacabaaa9a8a7a6a5a4a3a2a1a09f"
    "9e9d9c9b9a999897969594939291908f8e8d8c8b8a89888786858483828180"
)
ULAW_ENCODE_SPOTS = {  # edges, ±0/±1 and both sides of every segment boundary
    -32768: 0x00, -32767: 0x00, -31609: 0x00, -31608: 0x01, -16249: 0x0f, -16248: 0x10, -8057: 0x1f, -8056: 0x20,
    -3961: 0x2f, -3960: 0x30, -1913: 0x3f, -1912: 0x40, -889: 0x4f, -888: 0x50, -377: 0x5f, -376: 0x60, -121: 0x6f,
    -120: 0x70, -9: 0x7d, -8: 0x7e, -2: 0x7e, -1: 0x7e, 0: 0xff, 1: 0xff, 2: 0xff, 3: 0xff, 4: 0xfe, 123: 0xf0,
    124: 0xef, 379: 0xe0, 380: 0xdf, 891: 0xd0, 892: 0xcf, 1915: 0xc0, 1916: 0xbf, 3963: 0xb0, 3964: 0xaf,
    8059: 0xa0, 8060: 0x9f, 16251: 0x90, 16252: 0x8f, 31611: 0x81, 31612: 0x80, 32766: 0x80, 32767: 0x80,
}

ALAW_DECODE = (  # A-law code → sample, codes 0x00 to 0xff in order
     -5504,  -5248,  -6016,  -5760,  -4480,  -4224,  -4992,  -4736,  # 0x00
     -7552,  -7296,  -8064,  -7808,  -6528,  -6272,  -7040,  -6784,  # 0x08
     -2752,  -2624,  -3008,  -2880,  -2240,  -2112,  -2496,  -2368,  # 0x10
     -3776,  -3648,  -4032,  -3904,  -3264,  -3136,  -3520,  -3392,  # 0x18
    -22016, -20992, -24064, -23040, -17920, -16896, -19968, -18944,  # 0x20
    -30208, -29184, -32256, -31232, -26112, -25088, -28160, -27136,  # 0x28
    -11008, -10496, -12032, -11520,  -8960,  -8448,  -9984,  -9472,  # 0x30
    -15104, -14592, -16128, -15616, -13056, -12544, -14080, -13568,  # 0x38
      -344,   -328,   -376,   -360,   -280,   -264,   -312,   -296,  # 0x40
      -472,   -456,   -504,   -488,   -408,   -392,   -440,   -424,  # 0x48
       -88,    -72,   -120,   -104,    -24,     -8,    -56,    -40,  # 0x50
      -216,   -200,   -248,   -232,   -152,   -136,   -184,   -168,  # 0x58
     -1376,  -1312,  -1504,  -1440,  -1120,  -1056,  -1248,  -1184,  # 0x60
     -1888,  -1824,  -2016,  -1952,  -1632,  -1568,  -1760,  -1696,  # 0x68
      -688,   -656,   -752,   -720,   -560,   -528,   -624,   -592,  # 0x70
      -944,   -912,  -1008,   -976,   -816,   -784,   -880,   -848,  # 0x78
      5504,   5248,   6016,   5760,   4480,   4224,   4992,   4736,  # 0x80
      7552,   7296,   8064,   7808,   6528,   6272,   7040,   6784,  # 0x88
      2752,   2624,   3008,   2880,   2240,   2112,   2496,   2368,  # 0x90
      3776,   3648,   4032,   3904,   3264,   3136,   3520,   3392,  # 0x98
     22016,  20992,  24064,  23040,  17920,  16896,  19968,  18944,  # 0xa0
     30208,  29184,  32256,  31232,  26112,  25088,  28160,  27136,  # 0xa8
     11008,  10496,  12032,  11520,   8960,   8448,   9984,   9472,  # 0xb0
     15104,  14592,  16128,  15616,  13056,  12544,  14080,  13568,  # 0xb8
       344,    328,    376,    360,    280,    264,    312,    296,  # 0xc0
       472,    456,    504,    488,    408,    392,    440,    424,  # 0xc8
        88,     72,    120,    104,     24,      8,     56,     40,  # 0xd0
       216,    200,    248,    232,    152,    136,    184,    168,  # 0xd8
      1376,   1312,   1504,   1440,   1120,   1056,   1248,   1184,  # 0xe0
      1888,   1824,   2016,   1952,   1632,   1568,   1760,   1696,  # 0xe8
       688,    656,    752,    720,    560,    528,    624,    592,  # 0xf0
       944,    912,   1008,    976,    816,    784,    880,    848,  # 0xf8
)
ALAW_ENCODE_RUN_STARTS = (  # the lowest sample of each run of samples that encode alike, ascending
    -32768, -31744, -30720, -29696, -28672, -27648, -26624, -25600, -24576, -23552, -22528, -21504,
    -20480, -19456, -18432, -17408, -16384, -15872, -15360, -14848, -14336, -13824, -13312, -12800,
    -12288, -11776, -11264, -10752, -10240,  -9728,  -9216,  -8704,  -8192,  -7936,  -7680,  -7424,
     -7168,  -6912,  -6656,  -6400,  -6144,  -5888,  -5632,  -5376,  -5120,  -4864,  -4608,  -4352,
     -4096,  -3968,  -3840,  -3712,  -3584,  -3456,  -3328,  -3200,  -3072,  -2944,  -2816,  -2688,
     -2560,  -2432,  -2304,  -2176,  -2048,  -1984,  -1920,  -1856,  -1792,  -1728,  -1664,  -1600,
     -1536,  -1472,  -1408,  -1344,  -1280,  -1216,  -1152,  -1088,  -1024,   -992,   -960,   -928,
      -896,   -864,   -832,   -800,   -768,   -736,   -704,   -672,   -640,   -608,   -576,   -544,
      -512,   -496,   -480,   -464,   -448,   -432,   -416,   -400,   -384,   -368,   -352,   -336,
      -320,   -304,   -288,   -272,   -256,   -240,   -224,   -208,   -192,   -176,   -160,   -144,
      -128,   -112,    -96,    -80,    -64,    -48,    -32,    -16,      0,     16,     32,     48,
        64,     80,     96,    112,    128,    144,    160,    176,    192,    208,    224,    240,
       256,    272,    288,    304,    320,    336,    352,    368,    384,    400,    416,    432,
       448,    464,    480,    496,    512,    544,    576,    608,    640,    672,    704,    736,
       768,    800,    832,    864,    896,    928,    960,    992,   1024,   1088,   1152,   1216,
      1280,   1344,   1408,   1472,   1536,   1600,   1664,   1728,   1792,   1856,   1920,   1984,
      2048,   2176,   2304,   2432,   2560,   2688,   2816,   2944,   3072,   3200,   3328,   3456,
      3584,   3712,   3840,   3968,   4096,   4352,   4608,   4864,   5120,   5376,   5632,   5888,
      6144,   6400,   6656,   6912,   7168,   7424,   7680,   7936,   8192,   8704,   9216,   9728,
     10240,  10752,  11264,  11776,  12288,  12800,  13312,  13824,  14336,  14848,  15360,  15872,
     16384,  17408,  18432,  19456,  20480,  21504,  22528,  23552,  24576,  25600,  26624,  27648,
     28672,  29696,  30720,  31744,
)
ALAW_ENCODE_RUN_CODES = bytes.fromhex(  # the code of each run above
    "2a2b28292e2f2c2d22232021262724253a3b38393e3f3c3d3233303136373435"
    "0a0b08090e0f0c0d02030001060704051a1b18191e1f1c1d1213101116171415"
    "6a6b68696e6f6c6d62636061666764657a7b78797e7f7c7d7273707176777475"
    "4a4b48494e4f4c4d42434041464744455a5b58595e5f5c5d5253505156575455"
    "d5d4d7d6d1d0d3d2dddcdfded9d8dbdac5c4c7c6c1c0c3c2cdcccfcec9c8cbca"
    "f5f4f7f6f1f0f3f2fdfcfffef9f8fbfae5e4e7e6e1e0e3e2edecefeee9e8ebea"
    "95949796919093929d9c9f9e99989b9a85848786818083828d8c8f8e89888b8a"
    "b5b4b7b6b1b0b3b2bdbcbfbeb9b8bbbaa5a4a7a6a1a0a3a2adacafaea9a8abaa"
)


def reference_encoding(starts: tuple[int, ...], codes: bytes) -> np.ndarray:
    """The reference code of every sample -32768..32767, in that order, from its runs."""
    assert len(starts) == len(codes) and starts[0] == -32768 and list(starts) == sorted(set(starts))
    return np.repeat(np.frombuffer(codes, np.uint8), np.diff([*starts, 32768]))


def encoded(encode: object, samples: np.ndarray) -> np.ndarray:
    return np.frombuffer(encode(samples.astype("<i2").tobytes()), np.uint8)  # type: ignore[operator]


EVERY_SAMPLE = np.arange(-32768, 32768)
LAWS = {
    "ulaw": (audio.ulaw_encode, audio.ulaw_decode, ULAW_ENCODE_RUN_STARTS, ULAW_ENCODE_RUN_CODES, ULAW_DECODE),
    "alaw": (audio.alaw_encode, audio.alaw_decode, ALAW_ENCODE_RUN_STARTS, ALAW_ENCODE_RUN_CODES, ALAW_DECODE),
}


def test_the_pasted_reference_is_g711() -> None:
    """Guards the constants themselves: the μ-law decode table follows G.711's formula, and in
    both laws every code's decoded value lies inside the run of samples that encode to it."""
    for code in range(256):
        inverted = ~code & 0xFF  # μ-law sends every bit inverted
        exponent, mantissa = (inverted >> 4) & 0x07, inverted & 0x0F
        magnitude = (((2 * mantissa + 33) << exponent) - 33) * 4  # 14-bit G.711 value, scaled to 16 bits
        assert ULAW_DECODE[code] == (-magnitude if inverted & 0x80 else magnitude), hex(code)
    for starts, codes, decode in ((ULAW_ENCODE_RUN_STARTS, ULAW_ENCODE_RUN_CODES, ULAW_DECODE),
                                  (ALAW_ENCODE_RUN_STARTS, ALAW_ENCODE_RUN_CODES, ALAW_DECODE)):
        for start, stop, code in zip(starts, [*starts[1:], 32768], codes, strict=True):
            assert start <= decode[code] < stop, (hex(code), start, stop)
    assert len(set(ALAW_ENCODE_RUN_CODES)) == 256  # every A-law code is used
    assert set(ULAW_ENCODE_RUN_CODES) == set(range(256)) - {0x7F}  # μ-law's "-0" is never produced


@pytest.mark.parametrize("law", sorted(LAWS))
def test_g711_decode_matches_the_reference_table(law: str) -> None:
    _, decode, _, _, table = LAWS[law]
    assert np.frombuffer(decode(bytes(range(256))), "<i2").tolist() == list(table)


@pytest.mark.parametrize("law", sorted(LAWS))
def test_g711_encode_matches_the_reference_for_every_sample(law: str) -> None:
    encode, _, starts, codes, _ = LAWS[law]
    want = reference_encoding(starts, codes)
    got = encoded(encode, EVERY_SAMPLE)
    wrong = np.flatnonzero(got != want)
    assert wrong.size == 0, [(int(EVERY_SAMPLE[i]), hex(got[i]), hex(want[i])) for i in wrong[:10]]


@pytest.mark.parametrize(("sample", "code"), sorted(ULAW_ENCODE_SPOTS.items()))
def test_ulaw_encode_at_the_edges_and_segment_boundaries(sample: int, code: int) -> None:
    assert audio.ulaw_encode(np.array([sample], "<i2").tobytes()) == bytes([code])


@pytest.mark.parametrize("law", sorted(LAWS))
def test_g711_reencoding_a_decoded_code_gives_it_back(law: str) -> None:
    encode, decode, _, _, _ = LAWS[law]
    codes = np.arange(256, dtype=np.uint8)
    again = encoded(encode, np.frombuffer(decode(codes.tobytes()), "<i2"))
    if law == "ulaw":
        codes[0x7F] = 0xFF  # "-0" decodes to 0, which encodes as "+0"
    assert again.tolist() == codes.tolist()


def test_framer_and_helpers() -> None:
    framer = audio.Framer(320)
    assert framer.push(bytes(700)) == [bytes(320), bytes(320)]
    assert framer.flush() == bytes(320)
    assert framer.flush() is None
    assert audio.frame_bytes(8000) == 320 and audio.frame_bytes(16000) == 640 and audio.frame_bytes(44100) == 1764
    assert audio.rms_dbfs(bytes(320)) == float("-inf")
    assert audio.rms_dbfs(b"") == audio.rms_dbfs(b"\x10") == float("-inf")
    assert -4 < audio.rms_dbfs(np.full(160, 32767, "<i2").tobytes()) <= 0


def test_level_and_sample_conversion_are_exactly_their_definitions() -> None:
    """rms_dbfs is 10·log10 of the mean square (to the last bit), to_int16 rounds and clips."""
    rng = np.random.default_rng(7)
    for size in (1, 2, 159, 160, 320, 4000):
        for scale in (1.0, 300.0, 40000.0):
            samples = np.clip(rng.standard_normal(size) * scale, -32768, 32767).astype("<i2")
            wide = samples.astype(np.float64)
            mean_square = float(np.mean(wide * wide))
            expected = 10.0 * math.log10(mean_square / 32768.0**2) if mean_square > 0 else float("-inf")
            assert audio.rms_dbfs(samples.tobytes()) == expected
            assert audio.rms_dbfs(samples.tobytes() + b"\x7f") == expected  # (an odd byte is no sample)
            assert audio.power_dbfs(mean_square) == expected
            floats = (rng.standard_normal(size) * scale * 2).astype(np.float32)
            assert audio.to_int16(floats) == np.clip(np.rint(floats), -32768, 32767).astype("<i2").tobytes()


def test_trim_leading_silence_keeps_a_little_before_the_onset() -> None:
    rate = 16000
    quiet = np.full(rate * 60 // 1000, 3, dtype="<i2")  # 60 ms of hiss at about -80 dBFS
    loud = (np.sin(np.arange(rate // 10) / 5) * 8000).astype("<i2")
    chunks = [quiet[:500].tobytes(), np.concatenate([quiet[500:], loud]).tobytes()]
    trimmed = audio.trim_leading_silence(chunks, rate, keep_ms=10)
    out = np.frombuffer(b"".join(trimmed), dtype="<i2")
    first_loud = int(np.flatnonzero(np.abs(out) > 100)[0])
    assert first_loud == rate * 10 // 1000, "10 ms kept before the first loud sample"
    assert len(out) == len(loud) - 1 + rate * 10 // 1000  # loud[0] is a zero crossing, so quiet too
    assert chunks[0] == quiet[:500].tobytes(), "the input (a cached sentence) is not modified"
    assert audio.trim_leading_silence([quiet.tobytes()], rate) == [quiet.tobytes()], "all quiet: left alone"
    assert audio.trim_leading_silence([loud.tobytes()], rate) == [loud.tobytes()], "no lead-in: nothing to cut"


def test_the_inbound_resampler_holds_back_little_audio() -> None:
    """The caller's audio reaches the VAD through this resampler: whatever it holds back
    delays every end of turn and every barge-in (soxr's HQ stream holds ~95 ms)."""
    from audiosocket_ai.agents.assistant.listening import INBOUND_QUALITY

    for call_rate, stt_rate in ((8000, 16000), (16000, 16000), (48000, 16000)):
        resampler = audio.Resampler(call_rate, stt_rate, quality=INBOUND_QUALITY)
        fed_ms = 0
        out = b""
        for _ in range(25):  # half a second of 20 ms frames
            out += resampler.process(bytes(audio.frame_bytes(call_rate)))
            fed_ms += 20
        held_ms = fed_ms - len(out) / 2 / stt_rate * 1000
        assert held_ms <= 30, (call_rate, held_ms)


def test_speech_level_is_the_mean_of_the_loudest_third_above_the_floor() -> None:
    from audiosocket_ai.audio import speech_level_db

    assert speech_level_db([-20.0, -30.0, -40.0, -50.0, -25.0, -35.0, -100.0], above_db=-60.0) == -22.5
    assert speech_level_db([-70.0, float("-inf")], above_db=-60.0) is None
    assert speech_level_db([-70.0], above_db=-90.0) == -70.0


def test_resampler_if_needed_is_none_at_the_same_rate_and_resamples_otherwise() -> None:
    assert audio.resampler_if_needed(8000, 8000, quality="LQ") is None
    up = audio.resampler_if_needed(8000, 16000, quality="LQ")
    assert up is not None and (up.in_rate, up.out_rate) == (8000, 16000)
    out = up.process(audio.tone_pcm(440, 200, 8000)) + up.flush()
    assert len(out) == 2 * 16000 * 200 // 1000
