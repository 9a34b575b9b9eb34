"""Images: decoding files to gray pixels, the pixel cache build writes, exploration figures."""
