package dev.mobilec.core;

/** What a bundled model does: classify an image, or score items for a user. */
public enum Task {
  CLASSIFICATION("classification"),
  RECOMMENDATION("recommendation");

  public final String id;

  Task(String id) {
    this.id = id;
  }

  public static Task fromId(String id) {
    for (Task t : values()) {
      if (t.id.equals(id)) return t;
    }
    throw new IllegalArgumentException(
        "unknown task '" + id + "': expected \"classification\" or \"recommendation\"");
  }
}
