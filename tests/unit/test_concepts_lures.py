"""Phishing-lure concepts (guard/policy/concepts.toml): fake bank, mail-provider, courier,
streaming, tax-office, cloud-storage, reward and crypto notices. Per concept and language a
sentence that must yield the concept and a near miss that must not: mostly the genuine
service mail the lure imitates (a receipt, a delivery confirmation, a colleague sharing a
file). Sentences are written here; none is taken from a corpus."""

from __future__ import annotations

import pytest

from guard.policy.concepts import find_concepts, load_builtin
from guard.policy.normalize import normalise_info

LANGS_REQUIRED = {"en", "es", "pt", "fr", "de", "nl", "it", "ru", "pl", "tr", "id"}

# concept -> [(language, must fire, must not fire)]
CASES: dict[str, list[tuple[str, str, str]]] = {
    "payment_problem": [
        (
            "en",
            "We couldn't process your payment, please update your billing information.",
            "Your payment of $49.00 was received, thank you. Here is your receipt.",
        ),
        (
            "en",
            "Your subscription has been suspended because your card has expired.",
            "Our company card expired, so the milestone will be funded on Wednesday.",
        ),
        (
            "es",
            "No hemos podido procesar tu pago: actualiza tu método de pago.",
            "Hemos recibido tu pago de 49 €. Aquí tienes tu recibo.",
        ),
        (
            "pt",
            "Sua assinatura está suspensa: o pagamento foi recusado.",
            "Recebemos seu pagamento. Obrigado pela assinatura.",
        ),
        (
            "fr",
            "Votre paiement a été refusé, mettez à jour votre moyen de paiement.",
            "Votre paiement a bien été traité, merci.",
        ),
        (
            "de",
            "Ihre Zahlung ist fehlgeschlagen. Bitte aktualisieren Sie Ihre Zahlungsmethode.",
            "Ihre Zahlung ist eingegangen, vielen Dank.",
        ),
        (
            "nl",
            "Je betaling is mislukt, werk je betaalgegevens bij.",
            "Je betaling is ontvangen, bedankt.",
        ),
        (
            "it",
            "Il pagamento non è andato a buon fine: aggiorna il metodo di pagamento.",
            "Il pagamento è stato elaborato, grazie.",
        ),
        ("ru", "Платёж не прошёл, обновите способ оплаты.", "Платёж получен, спасибо."),
        (
            "pl",
            "Płatność nie powiodła się, zaktualizuj metodę płatności.",
            "Płatność została zaksięgowana, dziękujemy.",
        ),
        (
            "tr",
            "Ödemeniz alınamadı, ödeme yönteminizi güncelleyin.",
            "Ödemeniz alındı, teşekkürler.",
        ),
        (
            "id",
            "Pembayaran anda gagal, perbarui metode pembayaran.",
            "Pembayaran anda sudah kami terima, terima kasih.",
        ),
        ("zh", "付款失败，请更新付款方式", "付款成功，谢谢"),
    ],
    "storage_full": [
        (
            "en",
            "Your mailbox is almost full; incoming messages are on hold.",
            "I archived old mail, so my inbox is tidy again.",
        ),
        (
            "en",
            "Release your pending messages before they are deleted.",
            "Three messages are awaiting your reply in the project room.",
        ),
        (
            "es",
            "Tu buzón está lleno y tienes mensajes pendientes.",
            "El calendario está lleno esta semana.",
        ),
        (
            "pt",
            "Sua caixa de entrada está cheia: mensagens retidas.",
            "A agenda está cheia esta semana.",
        ),
        (
            "fr",
            "Votre boîte mail est pleine, des messages en attente.",
            "L'agenda est plein cette semaine.",
        ),
        (
            "de",
            "Ihr Postfach ist voll, eingehende Nachrichten werden zurückgehalten.",
            "Der Kalender ist diese Woche voll.",
        ),
        (
            "nl",
            "Uw mailbox is vol, inkomende berichten worden tegengehouden.",
            "De agenda is deze week vol.",
        ),
        (
            "it",
            "La tua casella di posta è piena: messaggi in arrivo in sospeso.",
            "L'agenda è piena questa settimana.",
        ),
        (
            "ru",
            "Ваш почтовый ящик переполнен, входящие письма задержаны.",
            "Календарь на неделю заполнен встречами.",
        ),
        (
            "pl",
            "Twoja skrzynka pocztowa jest pełna, wiadomości zostały wstrzymane.",
            "Kalendarz na ten tydzień jest pełny.",
        ),
        ("tr", "Posta kutunuz dolu, bekleyen mesajlar var.", "Bu haftaki takvim dolu."),
        (
            "id",
            "Kotak surat anda sudah penuh, pesan masuk tertunda.",
            "Jadwal minggu ini sudah penuh.",
        ),
    ],
    "delivery_fee": [
        (
            "en",
            "Your parcel is on hold: pay the customs fee to reschedule delivery.",
            "Your order has been delivered. No further action is needed.",
        ),
        # a parcel waiting for delivery or that could not be delivered, with no fee named
        ("en", "Your package is awaiting delivery.", "Your order is awaiting dispatch."),
        ("nl", "Je hebt 1 pakket in afwachting van aflevering.", "Je bestelling is verzonden."),
        ("nl", "Uw pakket kon niet worden bezorgd.", "Uw pakket is bezorgd."),
        ("de", "Ihr Paket konnte nicht zugestellt werden.", "Ihr Paket wurde zugestellt."),
        ("es", "Su paquete no pudo ser entregado.", "Su paquete fue entregado ayer."),
        ("pt", "Sua encomenda aguarda entrega.", "Sua encomenda foi entregue."),
        ("fr", "Votre colis n'a pas pu être livré.", "Votre colis a été livré."),
        ("ru", "Ваша посылка ожидает доставки.", "Ваша посылка доставлена."),
        ("id", "Paket Anda menunggu pengiriman.", "Paket Anda sudah diterima."),
        (
            "en",
            "We were unable to deliver your package: the address is incomplete.",
            "Shipping fee: $5.00. Your order will arrive on Tuesday.",
        ),
        (
            "es",
            "Su paquete está retenido en aduana, pague las tasas de aduana.",
            "Su paquete ha sido entregado. Gracias por su compra.",
        ),
        (
            "pt",
            "Sua encomenda foi taxada: pague a taxa de importação.",
            "Sua encomenda foi entregue. Obrigado pela compra.",
        ),
        (
            "fr",
            "Votre colis est en attente, réglez les frais de douane.",
            "Votre colis a été livré. Merci de votre achat.",
        ),
        (
            "de",
            "Ihr Paket wird zurückgehalten, die Zollgebühren sind offen.",
            "Ihr Paket wurde zugestellt. Vielen Dank für Ihre Bestellung.",
        ),
        (
            "nl",
            "Uw pakket wordt vastgehouden, betaal de douanekosten.",
            "Uw pakket is bezorgd. Bedankt voor uw bestelling.",
        ),
        (
            "it",
            "Il tuo pacco è in giacenza: paga le spese di sdoganamento.",
            "Il tuo pacco è stato consegnato. Grazie per l'acquisto.",
        ),
        (
            "ru",
            "Ваша посылка задержана на таможне, оплатите пошлину.",
            "Ваша посылка доставлена. Спасибо за покупку.",
        ),
        (
            "pl",
            "Twoja przesyłka została wstrzymana, wymagana dopłata za przesyłkę.",
            "Twoja przesyłka została doręczona. Dziękujemy.",
        ),
        (
            "tr",
            "Kargonuz gümrükte bekletiliyor, gümrük ücreti ödenmeli.",
            "Kargonuz teslim edildi. Teşekkür ederiz.",
        ),
        (
            "id",
            "Paket anda ditahan, bayar bea cukai untuk pengiriman ulang.",
            "Paket anda sudah diterima. Terima kasih.",
        ),
    ],
    "tax_refund": [
        (
            "en",
            "You are eligible for a tax refund of $412, submit the form today.",
            "My accountant filed my tax return last week.",
        ),
        (
            "en",
            "You have an unpaid toll balance; pay it online to avoid a penalty.",
            "The toll road was closed, so I was late.",
        ),
        (
            "es",
            "Tiene una devolución de impuestos pendiente de 380 €.",
            "Mi gestor presentó la declaración de la renta.",
        ),
        (
            "pt",
            "Você tem uma restituição do imposto disponível.",
            "Meu contador entregou a declaração do imposto.",
        ),
        (
            "fr",
            "Vous avez droit à un remboursement d'impôts de 310 €.",
            "Mon comptable a déposé ma déclaration d'impôts.",
        ),
        (
            "de",
            "Ihre Steuerrückerstattung wartet, bitte bestätigen Sie Ihre Daten.",
            "Mein Steuerberater hat die Steuererklärung eingereicht.",
        ),
        (
            "nl",
            "U heeft recht op een belastingteruggave van 290 euro.",
            "Mijn boekhouder heeft de aangifte ingediend.",
        ),
        (
            "it",
            "Hai diritto a un rimborso fiscale di 300 euro.",
            "Il commercialista ha inviato la dichiarazione dei redditi.",
        ),
        ("ru", "Вам положен возврат налога, подтвердите данные.", "Бухгалтер подал декларацию."),
        (
            "pl",
            "Masz nieopłacony mandat drogowy, opłać mandat online.",
            "Księgowa złożyła zeznanie podatkowe.",
        ),
        ("tr", "Vergi iadeniz hazır, bilgilerinizi onaylayın.", "Muhasebeci beyannameyi verdi."),
        (
            "id",
            "Anda memiliki denda tilang belum dibayar.",
            "Akuntan sudah melaporkan SPT pajak.",
        ),
    ],
    "reward_claim": [
        (
            "en",
            "You have been selected to claim your free gift.",
            "You have been added to the project as a reviewer.",
        ),
        (
            "en",
            "Your loyalty points expire tomorrow, redeem them now.",
            "Congratulations! You have been awarded the project.",
        ),
        ("en", "You've won a $500 voucher!", "Congrats, you have a new order!"),
        (
            "es",
            "¡Has ganado un premio! Reclama tu regalo ahora.",
            "Has ganado tiempo con la nueva estructura.",
        ),
        ("pt", "Você foi selecionado: resgate seu prêmio hoje.", "Você foi adicionado ao projeto."),
        ("fr", "Vous avez gagné ! Réclamez votre cadeau.", "Vous avez reçu une nouvelle commande."),
        (
            "de",
            "Sie wurden ausgewählt! Holen Sie sich jetzt Ihren Gutschein.",
            "Sie wurden zum Projekt hinzugefügt.",
        ),
        ("nl", "U bent geselecteerd, claim uw beloning.", "U bent toegevoegd aan het project."),
        ("it", "Hai vinto! Riscatta il tuo premio.", "Hai ricevuto un nuovo ordine."),
        ("ru", "Вы выиграли! Заберите свой приз.", "Вы получили новый заказ."),
        ("pl", "Wygrałeś! Odbierz nagrodę.", "Otrzymałeś nowe zamówienie."),
        ("tr", "Kazandınız! Hediyenizi hemen alın.", "Yeni bir siparişiniz var."),
        (
            "id",
            "Anda terpilih! Klaim hadiah anda sekarang.",
            "Selamat! Anda menerima pesanan baru.",
        ),
    ],
    "crypto_giveaway": [
        (
            "en",
            "The airdrop is live: connect your wallet and claim your tokens.",
            "The wallet screen needs a seed-phrase backup step in the app.",
        ),
        (
            "en",
            "Enter your 12-word recovery phrase to validate your wallet.",
            "The wallet library was updated to the new version.",
        ),
        (
            "es",
            "Sincroniza tu billetera para recibir la distribución de tokens.",
            "La billetera de la app necesita un nuevo diseño.",
        ),
        (
            "pt",
            "Resgate seus tokens: valide sua carteira hoje.",
            "A carteira do app precisa de um novo design.",
        ),
        (
            "fr",
            "Réclamez vos jetons : synchronisez votre portefeuille.",
            "Le portefeuille de l'app doit être redessiné.",
        ),
        (
            "de",
            "Verifizieren Sie Ihre Wallet und geben Sie die Wiederherstellungsphrase ein.",
            "Die Wallet-App braucht ein neues Design.",
        ),
        (
            "nl",
            "Synchroniseer je wallet en claim je tokens.",
            "De wallet-app heeft een nieuw ontwerp nodig.",
        ),
        (
            "it",
            "Sincronizza il tuo wallet e riscatta i tuoi token.",
            "L'app del wallet ha bisogno di un nuovo design.",
        ),
        (
            "ru",
            "Синхронизируйте ваш кошелёк и получите токены.",
            "Дизайн кошелька в приложении нужно обновить.",
        ),
        (
            "pl",
            "Zsynchronizuj portfel i odbierz tokeny.",
            "Portfel w aplikacji wymaga nowego projektu.",
        ),
        (
            "tr",
            "Cüzdanınızı doğrulayın ve token talep edin.",
            "Uygulamadaki cüzdan ekranı yeniden tasarlanmalı.",
        ),
        (
            "id",
            "Sinkronkan dompet anda untuk klaim token.",
            "Desain dompet di aplikasi perlu diperbarui.",
        ),
    ],
    "document_share": [
        (
            "en",
            "Anna has shared a document with you. Review the document here.",
            "I shared the design with you on the platform.",
        ),
        (
            "en",
            "You have a new voicemail. Click here to listen to the message.",
            "I left you a voicemail yesterday about the logo.",
        ),
        (
            "en",
            "You have new documents to review and sign.",
            "I've shared the Figma file with you, comments welcome.",
        ),
        (
            "es",
            "Laura ha compartido un archivo contigo.",
            "Te compartí el diseño en la plataforma.",
        ),
        ("pt", "Ana compartilhou um documento com você.", "Compartilhei o design na plataforma."),
        ("fr", "Paul a partagé un document avec vous.", "J'ai mis la maquette sur la plateforme."),
        (
            "de",
            "Anna hat eine Datei mit Ihnen geteilt.",
            "Ich habe Ihnen den Entwurf auf der Plattform geschickt.",
        ),
        (
            "nl",
            "Anna heeft een document met u gedeeld.",
            "Ik heb het ontwerp op het platform gezet.",
        ),
        (
            "it",
            "Marco ha condiviso un documento con te.",
            "Ti ho mandato il design sulla piattaforma.",
        ),
        (
            "ru",
            "Вам отправлен новый документ, документ ожидает вашей подписи.",
            "Я отправил макет на платформе.",
        ),
        (
            "pl",
            "Masz nowy dokument, dokument czeka na twój podpis.",
            "Wysłałem projekt na platformie.",
        ),
        (
            "tr",
            "Sizinle bir belge paylaştı: belgeyi görüntüleyin.",
            "Tasarımı platformda paylaştım.",
        ),
        (
            "id",
            "Rina membagikan dokumen dengan anda.",
            "Saya sudah kirim desainnya di platform.",
        ),
    ],
    "click_link": [
        (
            "en",
            "Click here to verify your account.",
            "I clicked through the staging site and it works.",
        ),
        ("en", "Scan the QR code with your phone.", "The barcode library is MIT licensed."),
        ("es", "Haz clic aquí para continuar.", "Hice clic en el botón y funciona."),
        ("pt", "Clique aqui para confirmar.", "Cliquei no botão e funcionou."),
        ("fr", "Cliquez ici pour confirmer.", "J'ai cliqué sur le bouton et ça marche."),
        (
            "de",
            "Klicken Sie hier, um fortzufahren.",
            "Ich habe auf den Button geklickt, es funktioniert.",
        ),
        ("nl", "Klik hier om verder te gaan.", "Ik heb op de knop geklikt en het werkt."),
        ("it", "Clicca qui per continuare.", "Ho cliccato sul pulsante e funziona."),
        ("ru", "Нажмите на кнопку ниже.", "Я нажал на кнопку, всё работает."),
        ("pl", "Kliknij tutaj, aby kontynuować.", "Kliknąłem przycisk i działa."),
        ("tr", "Devam etmek için buraya tıklayın.", "Butona tıkladım, çalışıyor."),
        ("id", "Klik di sini untuk melanjutkan.", "Saya sudah klik tombolnya kemarin."),
    ],
    # Extended concepts: every positive below is new (the lexicon before missed it).
    "verify_account": [
        (
            "en",
            "Your password expires today. Keep the same password here.",
            "I reset the staging password today.",
        ),
        (
            "en",
            "Confirm it's you: someone tried to sign in from a new device.",
            "Confirm the copy of the sign-in page before launch.",
        ),
        (
            "es",
            "Su contraseña caduca hoy; puede conservar la misma contraseña.",
            "Cambié la contraseña del servidor de pruebas.",
        ),
        (
            "pt",
            "Sua senha expira hoje, mantenha a mesma senha.",
            "Troquei a senha do servidor de testes.",
        ),
        (
            "fr",
            "Votre mot de passe expire aujourd'hui.",
            "J'ai changé le mot de passe du serveur de test.",
        ),
        (
            "de",
            "Ihr Passwort läuft heute ab.",
            "Ich habe das Passwort des Testservers geändert.",
        ),
        (
            "nl",
            "Uw account is tijdelijk geblokkeerd, verifieer uw identiteit.",
            "Uw ontwerp is goedgekeurd.",
        ),
        (
            "nl",
            "Uw wachtwoord verloopt vandaag.",
            "Ik heb het wachtwoord van de testserver gewijzigd.",
        ),
        (
            "it",
            "Conferma che sei tu: nuovo accesso rilevato.",
            "Nuovo accesso al repository per il team.",
        ),
        (
            "ru",
            "Срок действия вашего пароля истекает сегодня.",
            "Я сменил пароль на тестовом сервере.",
        ),
        ("pl", "Twoje hasło wygasa dzisiaj.", "Zmieniłem hasło na serwerze testowym."),
        (
            "tr",
            "Şifrenizin süresi doluyor, aynı şifreyi kullanmaya devam edin.",
            "Test sunucusunun şifresini değiştirdim.",
        ),
        (
            "id",
            "Kata sandi anda akan kedaluwarsa hari ini.",
            "Saya sudah ganti kata sandi server uji.",
        ),
    ],
    "urgency": [
        ("en", "Last notice: action required.", "The last release notes are attached."),
        ("es", "Último aviso: acción requerida.", "El aviso legal está en el pie de página."),
        ("pt", "Último aviso: ação necessária.", "O aviso legal está no rodapé."),
        ("fr", "Dernier rappel : action requise.", "Le rappel de la réunion est dans l'agenda."),
        ("de", "Letzte Mahnung: Handlung erforderlich.", "Die Mahnung wurde bezahlt, danke."),
        ("nl", "Laatste herinnering: reageer binnen 48 uur.", "Reageer wanneer het je uitkomt."),
        ("it", "Ultimo avviso: azione richiesta.", "L'avviso legale è nel piè di pagina."),
        ("ru", "Последнее уведомление: требуется действие.", "Уведомление о встрече в календаре."),
        (
            "pl",
            "Ostatnie przypomnienie: wymagane działanie.",
            "Przypomnienie o spotkaniu jest w kalendarzu.",
        ),
        ("tr", "Son hatırlatma: işlem gerekli.", "Toplantı hatırlatması takvimde."),
        (
            "id",
            "Pemberitahuan terakhir: tindakan diperlukan.",
            "Pemberitahuan rapat ada di kalender.",
        ),
    ],
    "threat": [
        (
            "en",
            "Your account will be permanently deleted.",
            "The old branch will be deleted after the merge.",
        ),
        (
            "en",
            "Legal action will follow if the balance is not paid.",
            "Our legal team reviewed the contract.",
        ),
        ("es", "Su cuenta será cerrada definitivamente.", "La reunión será cancelada si llueve."),
        ("pt", "Sua conta será encerrada.", "A reunião será cancelada se chover."),
        ("fr", "Votre compte sera supprimé.", "La réunion sera annulée s'il pleut."),
        ("de", "Ihr Konto wird dauerhaft gelöscht.", "Das Meeting wird abgesagt, falls es regnet."),
        (
            "nl",
            "Uw account wordt definitief verwijderd.",
            "De vergadering wordt afgelast als het regent.",
        ),
        ("it", "Il tuo account sarà chiuso.", "La riunione sarà annullata se piove."),
        ("ru", "Ваш аккаунт будет удалён.", "Встреча будет перенесена на завтра."),
        ("pl", "Twoje konto zostanie usunięte.", "Spotkanie zostanie przełożone na jutro."),
        ("tr", "Hesabınız kalıcı olarak silinecek.", "Toplantı yarına ertelenecek."),
        ("id", "Akun anda akan dihapus.", "Rapat akan ditunda sampai besok."),
    ],
}

LURES = (
    "payment_problem", "storage_full", "delivery_fee", "tax_refund", "reward_claim",
    "crypto_giveaway", "document_share",
)  # fmt: skip

PARAMS = [
    pytest.param(concept, lang, pos, neg, id=f"{concept}-{lang}-{i}")
    for concept, rows in CASES.items()
    for i, (lang, pos, neg) in enumerate(rows)
]


@pytest.fixture(scope="module")
def concepts():
    return load_builtin()


def _found(cs, text: str) -> set[str]:
    norm, _ = normalise_info(text)
    return {h.concept for h in find_concepts(cs, norm)}


@pytest.mark.parametrize(("concept", "lang", "positive", "near_miss"), PARAMS)
def test_lure_fires_and_near_miss_does_not(concepts, concept, lang, positive, near_miss):
    assert concept in _found(concepts, positive), f"{concept} not found in {lang}: {positive!r}"
    assert concept not in _found(concepts, near_miss), f"{concept} found in {lang}: {near_miss!r}"


def test_every_lure_concept_has_cases_in_eleven_languages(concepts):
    assert set(CASES) <= set(concepts.names)
    for concept, rows in CASES.items():
        langs = {lang for lang, _, _ in rows}
        assert langs >= LANGS_REQUIRED, (concept, LANGS_REQUIRED - langs)


# Genuine service and client mail of the kind the lures imitate: none is a lure.
_GENUINE = [
    "Receipt for your order #10482. Total paid: $24.99 with Visa ending 4242. Shipping fee: "
    "$4.00. Your package was delivered on Monday and left at the front door.",
    "Hi Sam, the milestone payment of $600.00 has been released to your Upwork balance. "
    "You can withdraw it from the Reports page.",
    "You have a new message from Laura about the checkout redesign. Reply in the room.",
    "Congratulations! Your proposal was accepted and the contract has started.",
    "I shared the Figma file with you and uploaded the invoice for March as a PDF. "
    "Let me know if the amount matches the purchase order.",
    "Your storage plan renews on 1 June for 2.99 EUR. No action is needed.",
    "Tu pedido ha sido enviado y llegará el jueves. Puedes seguir el envío en tu cuenta.",
    "Ihre Bestellung wurde versandt. Die Sendung wird am Donnerstag zugestellt.",
]


def test_genuine_service_mail_yields_no_lure(concepts):
    for text in _GENUINE:
        found = _found(concepts, text)
        assert not found & set(LURES), (text[:60], found & set(LURES))
