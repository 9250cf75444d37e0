"""Studies that need both the learned-optimizer library (`metaopt`) and its codec application (`codec`)."""
