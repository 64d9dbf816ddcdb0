package dev.mobilec.core;

/**
 * Image pixels to the model's normalized float NCHW input.
 *
 * <p>Per channel {@code x = (pixel / pixelScale - mean[c]) / std[c]}, computed in float32 in this
 * exact order so the phone builds bit-for-bit the tensor the host runtime was given by the bundler
 * (numpy does the same float32 operations). One-channel models take the luminance
 * {@code (299 R + 587 G + 114 B + 500) / 1000} (integer), which is the gray value itself for gray
 * pixels (R = G = B).
 *
 * <pre>{@code
 * int[] argb = new int[w * h];
 * bitmap.getPixels(argb, 0, w, 0, 0, w, h);          // Android
 * float[] x = Preprocessing.argbToNchw(argb, w, h, meta);
 * }</pre>
 */
public final class Preprocessing {
  private Preprocessing() {}

  /** Uses the metadata's channels, size, scale, mean and std; the image must already be H×W. */
  public static float[] argbToNchw(int[] argb, int width, int height, ModelMetadata meta) {
    if (width != meta.width() || height != meta.height()) {
      throw new IllegalArgumentException(
          "image is " + width + "x" + height + " but the model takes " + meta.width() + "x" + meta.height()
              + "; resize it first");
    }
    return argbToNchw(argb, width, height, meta.channels(), meta.pixelScale, meta.mean, meta.std);
  }

  /** ARGB_8888 pixels (row-major) to a 1×C×H×W float array. */
  public static float[] argbToNchw(
      int[] argb, int width, int height, int channels, float pixelScale, float[] mean, float[] std) {
    if (width <= 0 || height <= 0) throw new IllegalArgumentException("image size must be positive");
    if (argb.length != width * height) {
      throw new IllegalArgumentException(
          "expected " + (width * height) + " pixels for " + width + "x" + height + ", got " + argb.length);
    }
    if (channels != 1 && channels != 3) throw new IllegalArgumentException("channels must be 1 or 3");
    if (mean.length != channels || std.length != channels) {
      throw new IllegalArgumentException("mean and std need one value per channel");
    }
    int plane = width * height;
    float[] out = new float[channels * plane];
    for (int i = 0; i < plane; i++) {
      int p = argb[i];
      int r = (p >> 16) & 0xff;
      int g = (p >> 8) & 0xff;
      int b = p & 0xff;
      if (channels == 1) {
        out[i] = normalize(luminance(r, g, b), pixelScale, mean[0], std[0]);
      } else {
        out[i] = normalize(r, pixelScale, mean[0], std[0]);
        out[plane + i] = normalize(g, pixelScale, mean[1], std[1]);
        out[2 * plane + i] = normalize(b, pixelScale, mean[2], std[2]);
      }
    }
    return out;
  }

  /** 8-bit gray values (0..255, row-major) to a 1×1×H×W float array. */
  public static float[] grayToNchw(int[] gray, float pixelScale, float mean, float std) {
    float[] out = new float[gray.length];
    for (int i = 0; i < gray.length; i++) {
      if (gray[i] < 0 || gray[i] > 255) throw new IllegalArgumentException("gray value out of 0..255");
      out[i] = normalize(gray[i], pixelScale, mean, std);
    }
    return out;
  }

  /** Integer luminance of an RGB pixel; equals the channel value when R = G = B. */
  public static int luminance(int r, int g, int b) {
    return (299 * r + 587 * g + 114 * b + 500) / 1000;
  }

  static float normalize(int pixel, float scale, float mean, float std) {
    float v = (float) pixel / scale;
    v = v - mean;
    return v / std;
  }
}
