"""faiss retrieval index over image-text embeddings (no vlseg imports)."""
