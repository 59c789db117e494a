// The RabbitMQ Java client (Debian's librabbitmq-client-java 5.0) as a
// foreign peer, written from docs/wire.md; driven by java_client.py.
//   java Interop.java URL forward-produce QUEUE N   persistent, confirmed
//   java Interop.java URL trades-consume QUEUE N    prints one JSON line
//                                                   per trade it read
import com.rabbitmq.client.*;
import java.nio.charset.StandardCharsets;
import java.util.HashMap;
import java.util.Map;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;

public class Interop {
  public static void main(String[] a) throws Exception {
    ConnectionFactory f = new ConnectionFactory();
    f.setUri(a[0]);
    try (Connection c = f.newConnection("edp-interop-java")) {
      Channel ch = c.createChannel();
      String q = a[2];
      int n = Integer.parseInt(a[3]);
      if (a[1].equals("forward-produce")) {
        ch.queueDeclare(q, true, false, false, null);
        ch.queueDeclare(q + ".dlq", true, false, false, null);
        ch.confirmSelect();
        for (int i = 1; i <= n; i++) {
          Map<String, Object> h = new HashMap<>();
          h.put("origin", "java");
          AMQP.BasicProperties p = new AMQP.BasicProperties.Builder()
              .deliveryMode(2).messageId("java-" + i).contentType("text/plain")
              .headers(h).build();
          ch.basicPublish("", q, true, p, ("order " + i).getBytes(StandardCharsets.UTF_8));
        }
        ch.waitForConfirmsOrDie(30000);
      } else {
        BlockingQueue<Delivery> got = new LinkedBlockingQueue<>();
        ch.basicQos(50);
        ch.basicConsume(q, false, (tag, d) -> got.add(d), tag -> {});
        for (int i = 0; i < n; i++) {
          Delivery r = got.poll(20, TimeUnit.SECONDS);
          if (r == null)
            throw new IllegalStateException("only " + i + " trades in " + q);
          AMQP.BasicProperties p = r.getProperties();
          Object acct = p.getHeaders().get("account"), seq = p.getHeaders().get("seq");
          System.out.printf("{\"account\":\"%s\",\"account_type\":\"%s\",\"seq\":%s,"
                  + "\"seq_type\":\"%s\",\"message_id\":\"%s\",\"routing_key\":\"%s\","
                  + "\"delivery_mode\":%d}%n",
              acct, acct.getClass().getSimpleName(), seq, seq.getClass().getSimpleName(),
              p.getMessageId(), r.getEnvelope().getRoutingKey(), p.getDeliveryMode());
          ch.basicAck(r.getEnvelope().getDeliveryTag(), false);
        }
      }
    }
  }
}
