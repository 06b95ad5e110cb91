"""ConfigurableResources and the engines behind them (storage, ASR, translation, TTS, media, job store)."""
