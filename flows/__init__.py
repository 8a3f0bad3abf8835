"""sift flows: ingest, validation, preprocessing (Ray Data), video, corpus generation, scraping."""
