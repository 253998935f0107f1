import java.nio.file.*;

/** A JVM carries on across checkpoint/restore: a warmed-up heap and four
 *  threads. Same ready/go/result protocol as the other test programs. */
public class TpJava {
    static long digest(java.util.Map<Integer, String> m) {
        long s = 0;
        for (var e : m.entrySet()) s = s * 31 + e.getKey() * 7L + e.getValue().hashCode();
        return s;
    }

    public static void main(String[] a) throws Exception {
        Path dir = Paths.get(a[0]);
        boolean corrupt = a.length > 1 && a[1].equals("--corrupt");
        var m = new java.util.TreeMap<Integer, String>();
        for (int i = 0; i < 200_000; i++) m.put(i, "value-" + i);
        long before = digest(m);
        long[] ticks = new long[4];
        Thread[] ts = new Thread[4];
        for (int k = 0; k < 4; k++) {
            final int kk = k;
            ts[k] = new Thread(() -> {
                while (!Files.exists(dir.resolve("go-seen"))) {
                    ticks[kk]++;
                    try { Thread.sleep(5); } catch (InterruptedException e) { return; }
                }
            });
            ts[k].start();
        }
        Files.writeString(dir.resolve("ready.tmp"), "READY " + ProcessHandle.current().pid() + "\n");
        Files.move(dir.resolve("ready.tmp"), dir.resolve("ready"), StandardCopyOption.ATOMIC_MOVE);
        while (true) {
            Path go = dir.resolve("go");
            if (!Files.exists(dir)) System.exit(3);
            byte[] b = Files.exists(go) ? Files.readAllBytes(go) : new byte[0];
            if (b.length > 0 && b[0] == '1') break;
            Thread.sleep(10);
        }
        if (corrupt) m.put(7, "changed");
        long after = digest(m);
        Files.writeString(dir.resolve("go-seen"), "1");
        for (Thread t : ts) t.join();
        String res = before == after && m.size() == 200_000 ? "PASS\n" : "FAIL: the heap changed (" + before + " -> " + after + ")\n";
        for (int k = 0; k < 4; k++) if (ticks[k] == 0) res = "FAIL: thread " + k + " never ran\n";
        Files.writeString(dir.resolve("result.tmp"), res);
        Files.move(dir.resolve("result.tmp"), dir.resolve("result"), StandardCopyOption.ATOMIC_MOVE);
        System.exit(res.startsWith("PASS") ? 0 : 1);
    }
}
