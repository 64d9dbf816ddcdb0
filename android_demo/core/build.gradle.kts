// Pure Java, no Android API: metadata parsing, pre/post-processing, benchmark protocol and JSON.
// The same sources are compiled and tested without Gradle by core/run-tests.sh.
plugins {
    `java-library`
}

tasks.withType<JavaCompile>().configureEach {
    options.release.set(11)
    options.encoding = "UTF-8"
    options.compilerArgs.addAll(listOf("-Xlint:all", "-Xlint:-serial"))
}

// The unit tests use a small built-in harness (no JUnit download); `./gradlew :core:check` runs them.
val coreTests by tasks.registering(JavaExec::class) {
    group = "verification"
    description = "Runs the core module's unit tests (dev.mobilec.core.CoreTests)."
    classpath = sourceSets["test"].runtimeClasspath
    mainClass.set("dev.mobilec.core.CoreTests")
    systemProperty("java.awt.headless", "true")
}

tasks.named("check") { dependsOn(coreTests) }

// There are no JUnit classes to discover (Gradle 9 would fail the `test` task on that); coreTests runs them.
tasks.named<Test>("test") { enabled = false }
