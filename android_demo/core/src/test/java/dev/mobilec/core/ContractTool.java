package dev.mobilec.core;

import java.awt.image.BufferedImage;
import java.awt.image.Raster;
import java.io.File;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import javax.imageio.ImageIO;

/**
 * JVM side of the Python ↔ app contract tests (tests/test_android.py). Desktop-only (ImageIO),
 * so it lives with the tests, not in the module the app ships.
 *
 * <ul>
 *   <li>{@code metadata ASSETS_DIR}: parse {@code ASSETS_DIR/mobilec_metadata.json} with the app's
 *       parser, decode the sample PNG, preprocess it as the app does, and print the parsed fields
 *       plus the input tensor as JSON.
 *   <li>{@code classify LABELS_JSON LOGIT...}: print the app's top-5 for the given logits.
 *   <li>{@code inspect MODEL}: print the first input as the app's flatbuffer reader sees it.
 *   <li>{@code benchmark OK|FAIL}: print a benchmark result written by the app's writer.
 * </ul>
 */
public final class ContractTool {
  private ContractTool() {}

  public static void main(String[] args) throws Exception {
    if (args.length == 0) {
      System.err.println("usage: ContractTool metadata ASSETS_DIR | classify LABELS_JSON LOGIT... | benchmark OK|FAIL");
      System.exit(2);
    }
    Map<String, Object> out;
    try {
      switch (args[0]) {
        case "metadata":
          out = metadata(new File(args[1]));
          break;
        case "classify":
          out = classify(args);
          break;
        case "inspect":
          out = inspect(new File(args[1]));
          break;
        case "benchmark":
          System.out.print(benchmark("OK".equals(args[1])).toJson());
          return;
        default:
          throw new IllegalArgumentException("unknown mode " + args[0]);
      }
    } catch (IllegalArgumentException e) { // the app would show this message
      out = new LinkedHashMap<>();
      out.put("error", e.getMessage());
    }
    System.out.println(Json.writePretty(out, 2));
  }

  static Map<String, Object> metadata(File assets) throws IOException {
    String text = new String(Files.readAllBytes(new File(assets, ModelMetadata.ASSET_NAME).toPath()), StandardCharsets.UTF_8);
    ModelMetadata m = ModelMetadata.parse(text);
    Map<String, Object> out = new LinkedHashMap<>();
    out.put("schema", m.schema);
    out.put("model_file", m.modelFile);
    out.put("model_sha256", m.modelSha256);
    out.put("model_bytes", m.modelBytes);
    out.put("runtime", m.runtime.id);
    out.put("task", m.task.id);
    out.put("input_shape", m.inputShape);
    out.put("input_dtype", m.inputDtype);
    out.put("labels", m.labels);
    out.put("recipe", m.recipe);
    out.put("model_name", m.modelName);
    out.put("dataset", m.dataset);
    out.put("expected_source", m.expectedSource);
    out.put("model_file_exists", new File(assets, m.modelFile).isFile());
    if (m.task == Task.CLASSIFICATION) {
      out.put("pixel_scale", m.pixelScale);
      out.put("mean", m.mean);
      out.put("std", m.std);
      out.put("sample_image", m.sampleImage);
      out.put("true_label", m.sampleTrueLabel);
      out.put("expected_top1", m.expectedTop1);
      out.put("expected_top1_label", m.label(m.expectedTop1));
      List<Object> top = new ArrayList<>();
      for (ModelMetadata.ExpectedClass c : m.expectedTop5) {
        Map<String, Object> e = new LinkedHashMap<>();
        e.put("index", c.index);
        e.put("label", c.label);
        e.put("probability", c.probability);
        top.add(e);
      }
      out.put("expected_top5", top);
      BufferedImage img = ImageIO.read(new File(assets, m.sampleImage));
      if (img == null) throw new IllegalArgumentException("cannot decode " + m.sampleImage);
      int[] argb = exactArgb(img);
      out.put("image_width", img.getWidth());
      out.put("image_height", img.getHeight());
      float[] input = Preprocessing.argbToNchw(argb, img.getWidth(), img.getHeight(), m);
      int[] bits = new int[input.length];
      for (int i = 0; i < input.length; i++) bits[i] = Float.floatToRawIntBits(input[i]);
      out.put("input_bits", bits); // exact: compared bit for bit with numpy's float32 tensor
    } else {
      out.put("user_id", m.sampleUserId);
      out.put("expected_items", m.expectedItems);
      out.put("expected_scores", m.expectedScores);
      out.put("top_k", m.topK);
      out.put("output", m.recommendationOutput);
      out.put("num_items", m.numItems);
    }
    return out;
  }

  /**
   * ARGB pixels from the raster's samples (no colour-space conversion: BufferedImage.getRGB
   * gamma-converts gray images, Android's BitmapFactory does not).
   */
  static int[] exactArgb(BufferedImage img) {
    Raster r = img.getRaster();
    int w = img.getWidth();
    int h = img.getHeight();
    int bands = r.getNumBands();
    if (img.getColorModel() instanceof java.awt.image.IndexColorModel) {
      throw new IllegalArgumentException("palette PNGs are not expected from the bundler");
    }
    int[] out = new int[w * h];
    for (int y = 0; y < h; y++) {
      for (int x = 0; x < w; x++) {
        int red;
        int green;
        int blue;
        if (bands == 1 || bands == 2) {
          red = green = blue = r.getSample(x, y, 0);
        } else {
          red = r.getSample(x, y, 0);
          green = r.getSample(x, y, 1);
          blue = r.getSample(x, y, 2);
        }
        out[y * w + x] = 0xff000000 | (red << 16) | (green << 8) | blue;
      }
    }
    return out;
  }

  static Map<String, Object> inspect(File model) throws IOException {
    ModelInspector.Io io = ModelInspector.inspect(model);
    Map<String, Object> out = new LinkedHashMap<>();
    out.put("shape", io.input.shape);
    out.put("dtype", io.input.dtype);
    out.put("num_inputs", io.numInputs);
    out.put("input_quant", quant(io.inputQuant));
    out.put("output_quant", quant(io.outputQuant));
    return out;
  }

  private static Map<String, Object> quant(QuantParams q) {
    if (q == null) return null;
    Map<String, Object> m = new LinkedHashMap<>();
    m.put("dtype", q.dtype);
    m.put("scale", q.scale);
    m.put("zero_point", q.zeroPoint);
    return m;
  }

  static Map<String, Object> classify(String[] args) {
    Object parsed = Json.parse(args[1]);
    List<String> labels = new ArrayList<>();
    for (Object o : (List<?>) parsed) labels.add((String) o);
    float[] logits = new float[args.length - 2];
    for (int i = 2; i < args.length; i++) logits[i - 2] = Float.parseFloat(args[i]);
    List<Object> top = new ArrayList<>();
    for (Postprocessing.Prediction p : Postprocessing.classify(logits, labels, 5)) {
      Map<String, Object> e = new LinkedHashMap<>();
      e.put("index", p.index);
      e.put("label", p.label);
      e.put("probability", p.probability);
      top.add(e);
    }
    Map<String, Object> out = new LinkedHashMap<>();
    out.put("top5", top);
    return out;
  }

  /** A deterministic run through the real runner (a fake session and clock), or a failure. */
  static BenchmarkResult benchmark(boolean ok) {
    BenchmarkConfig cfg = new BenchmarkConfig("/data/local/tmp/model.pte", 3, 1, 2, "results.json");
    final long[] t = {0};
    BenchmarkRunner.Clock clock = () -> (t[0] += 1_500_000L);
    if (!ok) {
      return BenchmarkRunner.run(cfg, () -> {
        throw new IOException("/data/local/tmp/model.pte: open failed: ENOENT (No such file or directory)");
      }, clock, () -> 51200L);
    }
    return BenchmarkRunner.run(cfg, () -> new BenchmarkRunner.Session() {
      @Override
      public void run() {}

      @Override
      public void close() {}
    }, clock, () -> 51200L);
  }
}
