// mobilec Android demo: loads a bundled .pte (ExecuTorch) or .tflite (LiteRT) model,
// classifies the bundled sample (or scores a user), and benchmarks models for the adb profiler.
pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}

dependencyResolutionManagement {
    repositoriesMode.set(RepositoriesMode.FAIL_ON_PROJECT_REPOS)
    repositories {
        google() // com.google.ai.edge.litert
        mavenCentral() // org.pytorch:executorch-android, fbjni, soloader
    }
}

rootProject.name = "mobilec-android-demo"
include(":app", ":core")
